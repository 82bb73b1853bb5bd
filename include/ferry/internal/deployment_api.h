// The machinery behind FERRY_DEPLOYMENT: adapts a C++ class to the C table of <ferry/abi.h>. Not for user
// code; included by <ferry/deployment.h>. Exceptions thrown by user code are caught here and become errors.
#pragma once

#include <cstddef>
#include <exception>
#include <ferry/abi.h>
#include <ferry/internal/host.h>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace ferry {
namespace internal {

// What ferry::Model derives from, so that FERRY_DEPLOYMENT can tell a model from a deployment.
struct ModelMarker {};

}  // namespace internal
}  // namespace ferry

namespace ferry {

namespace internal {

inline void SetError(const FerryHostApi* host, FerryErrorSink* sink, std::string_view message) {
  if (host && sink) host->set_error(sink, FerryString{message.data(), message.size()});
}

template <typename T, typename = void>
struct OverridesReconfigure : std::false_type {};
template <typename T>
struct OverridesReconfigure<T, std::void_t<decltype(&T::reconfigure)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::reconfigure), decltype(&Deployment::reconfigure)>> {};
template <typename T, typename = void>
struct OverridesHandleBatch : std::false_type {};
template <typename T>
struct OverridesHandleBatch<T, std::void_t<decltype(&T::handle_batch)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::handle_batch), decltype(&Deployment::handle_batch)>> {};
template <typename T, typename = void>
struct OverridesPrepare : std::false_type {};
template <typename T>
struct OverridesPrepare<T, std::void_t<decltype(&T::prepare)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::prepare), decltype(&Deployment::prepare)>> {};
template <typename T, typename = void>
struct OverridesHandleStream : std::false_type {};
template <typename T>
struct OverridesHandleStream<T, std::void_t<decltype(&T::handle_stream)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::handle_stream), decltype(&Deployment::handle_stream)>> {};
template <typename T, typename = void>
struct OverridesAcceptWebSocket : std::false_type {};
template <typename T>
struct OverridesAcceptWebSocket<T, std::void_t<decltype(&T::accept_websocket)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::accept_websocket), decltype(&Deployment::accept_websocket)>> {};
template <typename T, typename = void>
struct OverridesCheckHealth : std::false_type {};
template <typename T>
struct OverridesCheckHealth<T, std::void_t<decltype(&T::check_health)>>
    : std::bool_constant<!std::is_same_v<decltype(&T::check_health), decltype(&Deployment::check_health)>> {};

inline void Emit(const Response& r, FerryResponseSink* sink) {
  const FerryHostApi* host = Host();
  host->set_status(sink, r.status);
  for (const auto& [k, v] : r.headers)
    host->add_header(sink, FerryString{k.data(), k.size()}, FerryString{v.data(), v.size()});
  host->set_body(sink, FerryString{r.body.data(), r.body.size()});
}

// An HttpError's answer: its status and {"error": message}.
inline void EmitHttpError(const HttpError& e, FerryResponseSink* sink) {
  Emit(Response::FromJson(Json{{"error", e.what()}}, e.status()), sink);
}

// Runs `body`, turning any exception into FERRY_ERROR with its text (an HttpError with a sink to answer
// through: that answer instead).
template <typename F>
int Guard(FerryErrorSink* error, F&& body, FerryResponseSink* answer = nullptr) {
  try {
    body();
    return FERRY_OK;
  } catch (const HttpError& e) {
    if (answer) {
      EmitHttpError(e, answer);
      return FERRY_OK;
    }
    SetError(Host(), error, e.what());
  } catch (const std::exception& e) {
    SetError(Host(), error, e.what());
  } catch (...) {
    SetError(Host(), error, "unknown exception");
  }
  return FERRY_ERROR;
}

// The entries a deployment's and a model's tables share: constructing an instance from the args JSON,
// applying a user_config, and running check_health.
template <typename T>
int ConstructInstance(FerryString args_json, void** instance, FerryErrorSink* error) {
  return Guard(error, [&] {
    std::string_view text(args_json.data, args_json.size);
    Json args = text.empty() ? Json::object() : Json::parse(text);
    *instance = new T(Args(std::move(args)));
  });
}
template <typename T>
int ReconfigureInstance(void* instance, FerryString config, FerryErrorSink* error) {
  return Guard(error, [&] {
    std::string_view text(config.data, config.size);
    static_cast<T*>(instance)->reconfigure(text.empty() ? Json() : Json::parse(text));
  });
}
template <typename T>
int CheckInstanceHealth(void* instance, FerryErrorSink* error) {
  int rc = FERRY_ERROR;
  int guard = Guard(error, [&] {
    if (static_cast<T*>(instance)->check_health())
      rc = FERRY_OK;
    else
      SetError(Host(), error, "check_health returned false");
  });
  return guard == FERRY_OK ? rc : FERRY_ERROR;
}

// What every table for T starts with: its size and version, its name, and how an instance is freed.
template <typename T>
FerryDeploymentApi TableFor(const char* name) {
  FerryDeploymentApi a{};
  a.struct_size = sizeof(FerryDeploymentApi);
  a.abi_version = FERRY_ABI_VERSION;
  a.name = name;
  a.destroy = [](void* instance) { delete static_cast<T*>(instance); };
  return a;
}

template <typename T>
const FerryDeploymentApi* DeploymentApiFor(const char* name);

// A ferry::Model's table; defined in <ferry/internal/model_api.h>.
template <typename T>
const FerryDeploymentApi* ModelApiFor(const char* name);

// The table FERRY_DEPLOYMENT exports for T.
template <typename T>
const FerryDeploymentApi* ApiFor(const char* name) {
  if constexpr (std::is_base_of_v<ModelMarker, T>) {
    return ModelApiFor<T>(name);
  } else {
    return DeploymentApiFor<T>(name);
  }
}

template <typename T>
const FerryDeploymentApi* DeploymentApiFor(const char* name) {
  static_assert(std::is_base_of_v<Deployment, T>,
                "FERRY_DEPLOYMENT needs a ferry::Deployment or ferry::Model subclass");
  static_assert(std::is_constructible_v<T, const Args&>, "the class needs a constructor taking const ferry::Args&");
  static const FerryDeploymentApi api = [name] {
    FerryDeploymentApi a = TableFor<T>(name);
    a.create = [](const FerryHostApi* host, FerryString args_json, void** instance, FerryErrorSink* error) {
      Host() = host;
      return ConstructInstance<T>(args_json, instance, error);
    };
    if constexpr (OverridesHandleStream<T>::value) {
      a.handle = [](void* instance, const FerryRequest* request, FerryResponseSink* sink, FerryErrorSink* error) {
        ResponseWriter writer(sink);
        return Guard(
            error,
            [&] {
              try {
                static_cast<T*>(instance)->handle_stream(Request(request), writer);
              } catch (const HttpError& e) {
                if (writer.started()) throw std::runtime_error(e.what());  // too late for a status: break the stream
                throw;
              }
            },
            sink);
      };
    } else {
      a.handle = [](void* instance, const FerryRequest* request, FerryResponseSink* sink, FerryErrorSink* error) {
        return Guard(
            error, [&] { Emit(static_cast<T*>(instance)->handle(Request(request)), sink); }, sink);
      };
    }
    if constexpr (OverridesAcceptWebSocket<T>::value) {
      a.ws_open = [](void* instance, const FerryRequest* request, FerryWebSocket* ws, void** session,
                     FerryResponseSink* refusal, FerryErrorSink* error) {
        *session = nullptr;
        return Guard(
            error,
            [&] {
              std::unique_ptr<WebSocketSession> s =
                  static_cast<T*>(instance)->accept_websocket(Request(request), WebSocket(ws));
              if (s) {
                *session = s.release();
                return;
              }
              Emit(Response::FromJson(Json{{"error", "the deployment refused the WebSocket session"}}, 403), refusal);
            },
            refusal);
      };
      a.ws_message = [](void*, void* session, FerryString data, int binary, FerryErrorSink* error) {
        return Guard(error, [&] {
          static_cast<WebSocketSession*>(session)->on_message(std::string_view(data.data, data.size), binary != 0);
        });
      };
      a.ws_closed = [](void*, void* session, int code, FerryString reason) {
        std::unique_ptr<WebSocketSession> s(static_cast<WebSocketSession*>(session));
        try {
          s->on_close(code, std::string_view(reason.data, reason.size));
        } catch (...) {
          // Nothing to tell: the session is over either way.
        }
      };
    }
    if constexpr (OverridesHandleBatch<T>::value) {
      a.handle_batch = [](void* instance, const FerryRequest* const* requests, size_t count,
                          FerryResponseSink* const* sinks, FerryErrorSink* error) {
        return Guard(error, [&] {
          std::vector<Request> batch;
          batch.reserve(count);
          for (size_t i = 0; i < count; ++i) batch.emplace_back(requests[i]);
          std::vector<Response> out = static_cast<T*>(instance)->handle_batch(std::span<const Request>(batch));
          if (out.size() != count)
            throw std::length_error("handle_batch returned " + std::to_string(out.size()) + " responses for " +
                                    std::to_string(count) + " requests");
          for (size_t i = 0; i < count; ++i) Emit(out[i], sinks[i]);
        });
      };
    }
    if constexpr (OverridesPrepare<T>::value) {
      a.prepare = [](void* instance, const FerryRequest* request, void** state, FerryErrorSink* error) {
        return Guard(error, [&] { *state = new std::any(static_cast<T*>(instance)->prepare(Request(request))); });
      };
      a.release = [](void*, void* state) { delete static_cast<std::any*>(state); };
    }
    if constexpr (OverridesReconfigure<T>::value) a.reconfigure = &ReconfigureInstance<T>;
    if constexpr (OverridesCheckHealth<T>::value) a.check_health = &CheckInstanceHealth<T>;
    return a;
  }();
  return &api;
}

}  // namespace internal

}  // namespace ferry
