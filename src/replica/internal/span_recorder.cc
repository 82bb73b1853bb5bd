#include "replica/internal/span_recorder.h"

#include <string>

#include "common/common.h"
#include "tracing/tracing.h"

namespace ferry::replica {

bool SpanRecorder::enabled() const { return tracer_ && tracer_->enabled(); }

void SpanRecorder::Start(Task& task) const {
  for (auto& [name, value] : task.request.headers) {
    if (name != "traceparent") continue;
    tracing::SpanContext parent;
    if (!tracing::ParseTraceparent(value, &parent) || !parent.sampled) return;
    auto t = std::make_unique<TaskTrace>();
    t->parent = parent;
    t->arrived_ns = tracing::UnixNanos();
    t->replica_span = tracing::NewSpanId();
    t->user_span = tracing::NewSpanId();
    t->traceparent = tracing::FormatTraceparent({parent.trace_id, t->user_span, true});
    value = t->traceparent;
    task.trace = std::move(t);
    return;
  }
}

void SpanRecorder::End(const Task& task, int status, size_t batch_size, int64_t answered_ns) const {
  const TaskTrace& t = *task.trace;
  const std::string request_id(task.request.request_id);
  if (t.prepare_start_ns != 0) {
    tracing::Span prepare;
    prepare.trace_id = t.parent.trace_id;
    prepare.span_id = tracing::NewSpanId();
    prepare.parent_span_id = t.replica_span;
    prepare.name = StrCat(spec_.deployment, ".prepare");
    prepare.start_unix_ns = t.prepare_start_ns;
    prepare.end_unix_ns = t.prepare_end_ns;
    prepare.attributes = {{"ferry.deployment", spec_.deployment},
                          {"code.function", std::string("prepare")},
                          {"ferry.request_id", request_id}};
    tracer_->Record(std::move(prepare));
  }
  if (t.user_start_ns != 0) {
    tracing::Span user;
    user.trace_id = t.parent.trace_id;
    user.span_id = t.user_span;
    user.parent_span_id = t.replica_span;
    user.name = StrCat(spec_.deployment, batch_size ? ".handle_batch" : ".handle");
    user.start_unix_ns = t.user_start_ns;
    user.end_unix_ns = t.user_end_ns;
    user.attributes = {{"ferry.deployment", spec_.deployment},
                       {"code.function", std::string(batch_size ? "handle_batch" : "handle")},
                       {"ferry.request_id", request_id}};
    if (batch_size) user.attributes.push_back({"ferry.batch_size", static_cast<int64_t>(batch_size)});
    user.error = status >= 500;
    tracer_->Record(std::move(user));
  }
  tracing::Span replica;
  replica.trace_id = t.parent.trace_id;
  replica.span_id = t.replica_span;
  replica.parent_span_id = t.parent.span_id;
  replica.name = "ferry.replica";
  replica.kind = tracing::SpanKind::kServer;
  replica.start_unix_ns = t.arrived_ns;
  replica.end_unix_ns = answered_ns;
  replica.attributes = {{"ferry.application", spec_.application},
                        {"ferry.deployment", spec_.deployment},
                        {"ferry.replica", spec_.replica_id},
                        {"ferry.request_id", request_id},
                        {"http.response.status_code", static_cast<int64_t>(status)}};
  if (task.stream_started) {
    replica.attributes.push_back({"ferry.stream.chunks", static_cast<int64_t>(task.chunks_sent)});
    replica.attributes.push_back({"ferry.stream.bytes", static_cast<int64_t>(task.bytes_sent)});
  }
  replica.error = status >= 500;
  tracer_->Record(std::move(replica));
}

}  // namespace ferry::replica
