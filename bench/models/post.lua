-- wrk script: POSTs the body in $BODY_FILE; $HEADER_LENGTH, when set, is sent as
-- Inference-Header-Content-Length (the binary tensor extension).
wrk.method = "POST"
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
local n = os.getenv("HEADER_LENGTH")
if n and n ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = n
  wrk.headers["Content-Type"] = "application/octet-stream"
else
  wrk.headers["Content-Type"] = "application/json"
end
