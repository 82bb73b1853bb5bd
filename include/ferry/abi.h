/* Ferry's plugin ABI: the C boundary between the ferry replica host and a deployment's code.
 *
 * A deployment library exports one function per deployment class, named ferry_deployment_<Name>, that
 * returns a FerryDeploymentApi table. The host passes a FerryHostApi table to create(); the plugin answers
 * through the host's sinks, so no C++ object, allocator or exception crosses the boundary. Plugins built
 * with another compiler or standard library work as long as the ABI version matches.
 *
 * Versioning: FERRY_ABI_VERSION changes when the layout of an existing struct changes. New functions are
 * appended to the tables; a side reads a field only when struct_size says the other side has it.
 *
 * Threads: the host calls handle() from several worker threads at once (up to the deployment's
 * max_ongoing_requests); reconfigure() and check_health() may run concurrently with handle(). create()
 * and destroy() run alone.
 */
#ifndef FERRY_ABI_H_
#define FERRY_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_ABI_VERSION 1u

#if defined(__GNUC__)
#define FERRY_EXPORT __attribute__((visibility("default")))
#else
#define FERRY_EXPORT
#endif

/* A borrowed byte string. Not NUL-terminated. */
typedef struct FerryString {
  const char* data;
  size_t size;
} FerryString;

typedef struct FerryHeader {
  FerryString name; /* lower-case */
  FerryString value;
} FerryHeader;

/* One request. OWNERSHIP: everything it points to is owned by the host and valid until handle()
 * returns; a plugin that needs a value later copies it. */
typedef struct FerryRequest {
  size_t struct_size;
  FerryString request_id;   /* the x-request-id */
  FerryString method;       /* "GET", "POST", ... */
  FerryString path;         /* the full path, including the application's route_prefix */
  FerryString query;        /* the query string without '?', empty when absent */
  FerryString route_prefix; /* the application's route_prefix that matched */
  const FerryHeader* headers;
  size_t num_headers;
  FerryString body;
  /* Returns non-zero once the request is cancelled (client gone or deadline passed). Cheap; long
   * computations should poll it and return early. */
  int (*is_cancelled)(const struct FerryRequest* self);
  void* host_context; /* for is_cancelled; opaque to the plugin */
  /* What the deployment's prepare() made of this request before its batch ran, or NULL (no prepare(),
   * or it failed). Owned by the plugin; the host hands it to release() after the request is answered.
   * Added after version 1's first tables: read it only when struct_size covers it. */
  void* prepared;
  /* A streamed body (larger than http_options.body_stream_threshold_bytes, or sent chunked without a
   * length), for handle() only: `body_streamed` is non-zero, `body` holds what came with the head (maybe
   * nothing) and the rest arrives as it is sent. read_body hands out the body piece by piece, the bytes in
   * `body` first: 1 with *chunk set (valid until the next read), 0 at its end, -1 when it broke (the
   * client went away, the request was cancelled, or the body passed max_body_bytes). The client sends
   * more only as pieces are read (flow control), so a handler that does not read holds it a window
   * behind. read_all_body reads every piece not read yet and returns them as one string (valid until
   * handle() returns; called again: the same string); *ok is 0 when the body broke. On the handling
   * thread only. Added after version 1's first tables: read them only when struct_size covers them. */
  int body_streamed;
  int (*read_body)(const struct FerryRequest* self, FerryString* chunk);
  FerryString (*read_all_body)(const struct FerryRequest* self, int* ok);
} FerryRequest;

/* Tensor element types (the Open Inference Protocol's datatypes). */
enum {
  FERRY_TYPE_BOOL = 0,
  FERRY_TYPE_UINT8 = 1,
  FERRY_TYPE_UINT16 = 2,
  FERRY_TYPE_UINT32 = 3,
  FERRY_TYPE_UINT64 = 4,
  FERRY_TYPE_INT8 = 5,
  FERRY_TYPE_INT16 = 6,
  FERRY_TYPE_INT32 = 7,
  FERRY_TYPE_INT64 = 8,
  FERRY_TYPE_FP16 = 9,
  FERRY_TYPE_FP32 = 10,
  FERRY_TYPE_FP64 = 11,
  FERRY_TYPE_BYTES = 12
};

/* A borrowed tensor. OWNERSHIP: whoever passes it owns everything it points to, for the call only.
 * `data`: for fixed-size types the elements, row-major, little-endian (element count x element size
 * bytes); for BYTES each element as a 4-byte little-endian length followed by its bytes (the layout of
 * the protocol's binary tensor extension). */
typedef struct FerryTensor {
  FerryString name;
  uint32_t datatype; /* FERRY_TYPE_* */
  const int64_t* shape;
  size_t rank;
  FerryString data;
} FerryTensor;

/* One infer request, parsed by the host and checked against the model's metadata (names, datatypes,
 * shapes, element counts) before the model sees it. OWNERSHIP: the host's, valid until infer() returns. */
typedef struct FerryInferRequest {
  size_t struct_size;
  const FerryRequest* http;  /* the HTTP request it came in: headers, request id, is_cancelled */
  FerryString id;            /* the request's "id" (the host echoes it) */
  FerryString parameters;    /* the request's "parameters" object as JSON; empty when absent */
  const FerryTensor* inputs; /* in the order the client sent them */
  size_t num_inputs;
  const FerryString* outputs; /* the output names asked for; none: all */
  size_t num_outputs;
} FerryInferRequest;

/* Where a model writes one request's answer. Opaque; written only through FerryHostApi. */
typedef struct FerryInferSink FerryInferSink;

/* Deployment handles (composition). OWNERSHIP: a FerryHandle is the host's and lives as long as the
 * replica; a FerryCall is the plugin's from call() until it passes it to release_call(). */
typedef struct FerryHandle FerryHandle;
typedef struct FerryCall FerryCall;

/* One call through a handle. OWNERSHIP: the caller's; the host copies what it needs before call()
 * returns. */
typedef struct FerryCallOptions {
  size_t struct_size;
  FerryString method_name; /* the callee's method (Ray's handle.method.remote()); empty: its default */
  FerryString http_method; /* empty: "POST" */
  FerryString path;        /* the path the callee sees; empty: "/" */
  FerryString query;
  const FerryHeader* headers; /* lower-case names */
  size_t num_headers;
  FerryString body;
  /* The request being handled, or NULL: the call then carries its remaining deadline, its request id
   * (the call's own id is made from it), its trace, and is cancelled when it is. */
  const struct FerryRequest* parent;
  double timeout_s; /* > 0: at most this long (the parent's deadline still applies); 0: none of its own */
  /* Non-zero: the caller asks for the events, with wait_call (they arrive on its thread) or watch_call
   * (from then on on the host's I/O thread); before either, none may arrive. A caller that blocks for
   * the answer this way reads it itself, with no I/O thread between it and the callee. Added after
   * version 1's first tables: the host reads it only when struct_size covers it. */
  int events_on_demand;
  /* When `parent` is NULL: the stream of a deferred answer (defer_response) or detached stream whose
   * request the call works for, after handle() returned — the call carries that request's deadline,
   * request id and trace, and is cancelled with it, as with `parent`. The caller keeps it valid (not
   * ended with stream_end or stream_respond) during call(). Added after version 1's first tables: the host
   * reads it only when struct_size covers it. */
  struct FerryStream* parent_stream;
} FerryCallOptions;

/* What the host tells the caller of a call, on the host's I/O thread (for a call with events_on_demand:
 * on the thread in wait_call, until watch_call), in this order: on_head once when
 * the callee answers (`stream` non-zero: chunks follow as the callee produces them), on_chunk for the
 * body (once for a whole answer, once per chunk for a stream), on_end once. A call that ends without an
 * answer gets on_end only: ok 0, `status` 503 (the callee is overloaded: max_queued_requests), 504 (the
 * deadline passed), 502 (its replica failed), 404 (no such deployment) or 499 (cancelled), and `error`
 * naming the deployment and the reason. ok 0 after on_head: the stream broke. The callbacks must not
 * block; `user` must stay valid until on_end has returned. */
typedef struct FerryCallEvents {
  size_t struct_size;
  void (*on_head)(void* user, int status, const FerryHeader* headers, size_t num_headers, int stream);
  void (*on_chunk)(void* user, FerryString data);
  void (*on_end)(void* user, int ok, int status, FerryString error);
} FerryCallEvents;

/* Where a plugin writes its answer. Opaque; written only through FerryHostApi. */
typedef struct FerryResponseSink FerryResponseSink;
/* A streamed answer that outlives handle() (detach_stream). OWNERSHIP: the plugin's from detach_stream
 * until it passes it to stream_end. */
typedef struct FerryStream FerryStream;
/* One WebSocket session's sending side. OWNERSHIP: the host's, valid from ws_open() until ws_closed()
 * has returned; usable from any thread in that time. */
typedef struct FerryWebSocket FerryWebSocket;
/* Where a plugin writes an error message. Opaque; written only through FerryHostApi. */
typedef struct FerryErrorSink FerryErrorSink;

/* Functions the host offers the plugin. OWNERSHIP: the table is owned by the host and outlives every
 * instance. Every function copies the bytes it is given. */
typedef struct FerryHostApi {
  size_t struct_size;
  uint32_t abi_version;
  void (*set_status)(FerryResponseSink* sink, int status);
  void (*add_header)(FerryResponseSink* sink, FerryString name, FerryString value);
  void (*set_body)(FerryResponseSink* sink, FerryString body);
  void (*set_error)(FerryErrorSink* sink, FerryString message);
  /* Writes one line to the replica's log at `level` (FERRY_LOG_DEBUG ... FERRY_LOG_ERROR), with the
   * replica's id (and, inside handle(), the request's id) in the encoding of the deployment's
   * logging_config; lines below its log_level are dropped. Any thread. Added after version 1's first
   * tables: read it only when struct_size covers it. */
  void (*log)(int level, FerryString message);
  /* The tensor entry (models). Added after version 1's first tables: read them only when struct_size
   * covers them. Each copies what it is given.
   * add_output: appends an output tensor to one request's answer.
   * set_infer_parameters: the answer's "parameters" (a JSON object).
   * fail_infer: answers this request alone with `status` (400-599) and `message`. */
  void (*add_output)(FerryInferSink* sink, const FerryTensor* tensor);
  void (*set_infer_parameters)(FerryInferSink* sink, FerryString parameters_json);
  void (*fail_infer)(FerryInferSink* sink, int status, FerryString message);
  /* Streams the answer of handle(): the first call sends the status and headers set so far, then each
   * call sends `data` as one chunk of the body, forwarded to the client as soon as it has room for it (a
   * slow client makes this wait: the host never buffers more than a window per stream). Returns 0 when
   * sent, non-zero once the stream is over (the client went away, the request was cancelled): handle()
   * should stop producing and return. The stream ends when handle() returns; FERRY_ERROR after the first
   * chunk breaks it (the client sees the body cut short). set_status, add_header and set_body do nothing
   * once streaming began. Where a stream cannot be (inside handle_batch), chunks are gathered into the
   * body. Added after version 1's first tables: read it only when struct_size covers it. */
  int (*write_chunk)(FerryResponseSink* sink, FerryString data);
  /* Handles. Added after version 1's first tables: read them only when struct_size covers them.
   * get_handle: a handle to `deployment` of `application` (empty: this replica's own application);
   * NULL with the message in `error` when there is none to be had. Whether the deployment exists is
   * known at call time (a call to one that does not answers 404), so a constructor may take handles to
   * deployments that start after it.
   * call: starts a call; events arrive through `events` with `user`. Never NULL.
   * call_consumed: a stream's caller took `bytes` of its chunks (the callee may send that many more:
   * a caller that does not read holds the callee one window ahead, no more).
   * cancel_call: stops the call (it ends with 499 unless it ended already; the callee is cancelled).
   * release_call: frees the call; only once its on_end began (from within on_end too: the host touches
   * nothing of the call's after calling on_end). */
  FerryHandle* (*get_handle)(FerryString application, FerryString deployment, FerryErrorSink* error);
  FerryCall* (*call)(FerryHandle* handle, const FerryCallOptions* options, const FerryCallEvents* events, void* user);
  void (*call_consumed)(FerryCall* call, size_t bytes);
  void (*cancel_call)(FerryCall* call);
  void (*release_call)(FerryCall* call);
  /* Which replica this is (Ray's serve.get_replica_context()): views valid as long as the replica. Added
   * after version 1's first tables: read it only when struct_size covers it. */
  void (*replica_context)(FerryString* application, FerryString* deployment, FerryString* replica_id);
  /* WebSocket sessions. Added after version 1's first tables: read them only when struct_size covers them.
   * ws_send: sends one message (text: valid UTF-8; binary when `binary` is non-zero), waiting while the
   * client is slow (a window per session, as write_chunk). Returns 0 when sent, non-zero once the session
   * is closing or closed. Any thread.
   * ws_close: closes the session with `code` (1000 normal, 1001 going away, 1008 policy, 1011 error,
   * 3000-4999 the application's) and `reason` (at most 123 bytes); ws_closed() follows. Any thread. */
  int (*ws_send)(FerryWebSocket* ws, FerryString data, int binary);
  void (*ws_close)(FerryWebSocket* ws, int code, FerryString reason);
  /* Detached streams: an answer that goes on after handle() returned, written from any thread, holding no
   * thread of the replica while it waits (a server that pushes events when they happen). Added after
   * version 1's first tables: read them only when struct_size covers them.
   * detach_stream: inside handle(), sends the status and headers set so far (if no chunk did yet) and
   * returns the stream; handle() may then return while the stream stays open (one ongoing request, until
   * it ends). NULL where a stream cannot be (inside handle_batch): answer in handle() then.
   * stream_write: as write_chunk (waits while the client is slow; non-zero once the stream is over: the
   * client left, or it was cancelled), from any thread, one at a time.
   * stream_end: ends the stream (ok non-zero: complete; zero: broken, with `message`) and frees it; once,
   * after the last write. */
  FerryStream* (*detach_stream)(FerryResponseSink* sink);
  int (*stream_write)(FerryStream* stream, FerryString data);
  void (*stream_end)(FerryStream* stream, int ok, FerryString message);
  /* Calls made with events_on_demand. Added after version 1's first tables: read them only when
   * struct_size covers them.
   * wait_call: delivers the call's next events on this thread, waiting for them when `block` is
   * non-zero, until at least one came or the call ended (its deadline passing ends it). Returns non-zero
   * when it did; 0 when this call's events come from the I/O thread instead (it had to queue, or was
   * watched): wait for them there.
   * watch_call: from now on the call's events arrive on the host's I/O thread (a caller that will not
   * wait: a callback on its end). Once per call. */
  int (*wait_call)(FerryCall* call, int block);
  void (*watch_call)(FerryCall* call);
  /* Deferred answers: handle() returns before its answer exists; the answer comes later, from any thread
   * (a callback of a call it made), and no replica thread waits meanwhile. The request is one ongoing
   * request until answered. Added after version 1's first tables: read them only when struct_size covers
   * them.
   * defer_response: inside handle(), before anything was sent: returns the pending answer; nothing is
   * sent yet. NULL where it cannot be (inside handle_batch, after streaming began, a request cancelled).
   * stream_head: the status and headers the first stream_write on it sends (200 and none by default).
   * stream_respond: answers in one piece (status, headers, body) and frees the stream; a stream that began
   * just ends. stream_write and stream_end apply to it as to a detached stream; stream_end before any
   * answer answers with the head's status and no body (ok non-zero) or 500 with `message`. */
  FerryStream* (*defer_response)(FerryResponseSink* sink);
  void (*stream_head)(FerryStream* stream, int status, const FerryHeader* headers, size_t num_headers);
  void (*stream_respond)(FerryStream* stream, int status, const FerryHeader* headers, size_t num_headers,
                         FerryString body);
  /* Non-zero once the request a detached stream or deferred answer belongs to is cancelled (its client
   * went away, its deadline passed, its caller cancelled it): stop working on it. Cheap; any thread.
   * Added after version 1's first tables: read it only when struct_size covers it. */
  int (*stream_cancelled)(FerryStream* stream);
  /* As log, for the request `request_id` (a deferred answer's work, or any thread that knows which
   * request it works for): the line carries that request id. Added after version 1's first tables: read
   * it only when struct_size covers it. */
  void (*log_for_request)(int level, FerryString request_id, FerryString message);
  /* The deployment's own metrics (Ray Serve's ray.serve.metrics), exported on the node's /metrics with the
   * replica's application, deployment and replica as labels besides the tags. metric_define returns an id
   * (>= 0) for a name ([a-zA-Z_:][a-zA-Z0-9_:]*, not starting with ferry_), a kind (FERRY_METRIC_*) and,
   * for a histogram, 1 to 64 ascending positive bucket boundaries; the same name, kind and boundaries again
   * give the same id; -1 otherwise, with *error (when not null) set to the reason, valid on the calling
   * thread until its next metric_define. metric_record adds `value` (> 0) to a
   * counter, sets a gauge, observes a histogram, in the series of `tags` (names [a-zA-Z_][a-zA-Z0-9_]*, any
   * order); 0 when recorded, -1 when dropped (unknown id, a counter's value not positive, a bad tag name,
   * or 10,000 series in the replica). Any thread. Added after version 1's first tables: read them only
   * when struct_size covers them. */
  int (*metric_define)(FerryString name, FerryString description, int kind, const double* boundaries,
                       size_t num_boundaries, FerryString* error);
  int (*metric_record)(int metric, const FerryHeader* tags, size_t num_tags, double value);
  /* The multiplexed models this replica has loaded now (Ray's model ids, the serve_multiplexed_model_id
   * header), replacing what it said before: routers send a model's requests to replicas that have it
   * loaded first. Copied; any thread. Added after version 1's first tables: read it only when
   * struct_size covers it. */
  void (*set_model_ids)(const FerryString* model_ids, size_t num_model_ids);
} FerryHostApi;

/* Kinds of FerryHostApi.metric_define. */
enum { FERRY_METRIC_COUNTER = 0, FERRY_METRIC_GAUGE = 1, FERRY_METRIC_HISTOGRAM = 2 };

/* Levels of FerryHostApi.log. */
enum { FERRY_LOG_DEBUG = 0, FERRY_LOG_INFO = 1, FERRY_LOG_WARNING = 2, FERRY_LOG_ERROR = 3 };

/* Result codes of the plugin's functions. */
enum {
  FERRY_OK = 0,
  FERRY_ERROR = 1 /* the message is in the error sink */
};

/* The table a plugin exports for one deployment class. OWNERSHIP: static storage in the plugin. */
typedef struct FerryDeploymentApi {
  size_t struct_size;
  uint32_t abi_version; /* FERRY_ABI_VERSION the plugin was built with */
  const char* name;     /* the class name */
  /* Builds an instance from the deployment's args (a JSON object). On FERRY_OK *instance is set and
   * owned by the host until it passes it to destroy(). On FERRY_ERROR the message is in `error`. */
  int (*create)(const FerryHostApi* host, FerryString args_json, void** instance, FerryErrorSink* error);
  void (*destroy)(void* instance);
  /* Answers one request through `response`. FERRY_ERROR answers 500 with the message in `error`. */
  int (*handle)(void* instance, const FerryRequest* request, FerryResponseSink* response, FerryErrorSink* error);
  /* Applies a new user_config (JSON). NULL when the class has no reconfigure. */
  int (*reconfigure)(void* instance, FerryString user_config_json, FerryErrorSink* error);
  /* FERRY_OK when healthy. NULL when the class has no check_health. */
  int (*check_health)(void* instance, FerryErrorSink* error);
  /* Answers `count` requests at once, writing responses[i] for requests[i]. FERRY_ERROR fails the whole
   * batch with the message in `error`; to fail one item, answer it with an error status. NULL when the
   * class has no handle_batch (then it is never batched). Added after version 1's first tables: read it
   * only when struct_size covers it. */
  int (*handle_batch)(void* instance, const FerryRequest* const* requests, size_t count,
                      FerryResponseSink* const* responses, FerryErrorSink* error);
  /* Work on one request that needs no other request (parsing, validation), done as soon as the request
   * arrives, on the thread that received it, while its batch is still gathering: handle_batch() then has
   * only the batch's own work left. Called for batched deployments only, concurrently with
   * handle_batch() of other requests. On FERRY_OK *state reaches handle_batch() as the request's
   * `prepared` and then release(); on FERRY_ERROR the message is logged and the request goes to
   * handle_batch() unprepared. NULL when the class has no prepare. Added after version 1's first tables:
   * read them only when struct_size covers them. */
  int (*prepare)(void* instance, const FerryRequest* request, void** state, FerryErrorSink* error);
  /* Frees what prepare() returned. Any thread, once per successful prepare(). */
  void (*release)(void* instance, void* state);
  /* The tensor entry: set by models, NULL otherwise. Added after version 1's first tables: read them
   * only when struct_size covers them. A table with `infer` may leave handle, handle_batch and prepare
   * NULL: the host parses the Open Inference Protocol and calls infer() with tensors instead.
   * model_metadata: writes the model's metadata as JSON ({"name", "versions", "platform", "inputs":
   * [{"name", "datatype", "shape"}], "outputs": [...]}) as the body of `out`; called once after create().
   * infer: answers `count` requests (one, or a batch when the config has `batching`) through sinks[i];
   * FERRY_ERROR fails them all with the message. Runs on up to max_ongoing_requests threads at once. */
  int (*model_metadata)(void* instance, FerryResponseSink* out, FerryErrorSink* error);
  int (*infer)(void* instance, const FerryInferRequest* const* requests, size_t count, FerryInferSink* const* sinks,
               FerryErrorSink* error);
  /* WebSocket sessions (a GET with Upgrade: websocket on the deployment's route). NULL when the class
   * takes none (the client is answered 403). Added after version 1's first tables: read them only when
   * struct_size covers them.
   * ws_open: the handshake's request (valid during the call). Accept: FERRY_OK with *session set (the
   * plugin's, until ws_closed); the client is then answered 101. Refuse: FERRY_OK with *session NULL and
   * the answer written to `refusal` (its status, 403 when unset, headers and body); FERRY_ERROR refuses
   * with 500 and the message.
   * ws_message: one message from the client; a session's messages arrive one at a time, in order, on any
   * of the replica's threads. FERRY_ERROR closes the session with 1011 and the message (logged).
   * ws_closed: the session is over, once: the client closed it (its code), the deployment did (the code
   * it gave), or the connection broke (1006). The plugin frees `session` here. */
  int (*ws_open)(void* instance, const FerryRequest* request, FerryWebSocket* ws, void** session,
                 FerryResponseSink* refusal, FerryErrorSink* error);
  int (*ws_message)(void* instance, void* session, FerryString data, int binary, FerryErrorSink* error);
  void (*ws_closed)(void* instance, void* session, int code, FerryString reason);
} FerryDeploymentApi;

typedef const FerryDeploymentApi* (*FerryDeploymentEntry)(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FERRY_ABI_H_ */
