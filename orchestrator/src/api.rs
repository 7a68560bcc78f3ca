//! The `rpaflow.v1.FlowService` gRPC API over an [`OrchestratorHandle`], plus health and
//! reflection, over gRPC and gRPC-Web (the web console's calls), with the console's assets on
//! the same port. Every call acts in its caller's namespace (the [`crate::auth::Identity`] the
//! auth layer put on the request) and sees nothing of any other.

use std::net::SocketAddr;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::flow_service_server::{FlowService, FlowServiceServer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::Error;
use crate::orchestrator::{Answer, OrchestratorHandle, StartRun};
use crate::state::RunStatus;
use crate::tls::ServerTls;

/// Serves the API on `listener` until `shutdown` resolves; over TLS when `tls` is given.
///
/// gRPC health (`grpc.health.v1.Health`) says SERVING, for the server and for
/// `rpaflow.v1.FlowService`, until `draining` is cancelled, then NOT_SERVING while the service
/// drains (load balancers stop sending new calls; calls already made still get answers).
pub async fn serve(
    handle: OrchestratorHandle,
    listener: TcpListener,
    tls: Option<&ServerTls>,
    draining: tokio_util::sync::CancellationToken,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FlowServiceServer<Api>>().await;
    // Ends only with the server (the select below).
    let not_serving = async move {
        draining.cancelled().await;
        health.set_not_serving::<FlowServiceServer<Api>>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        std::future::pending::<()>().await
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rpaflow_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("rpaflow.v1.FlowService")
        .with_service_name("rpaflow.v1.AuthService")
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .expect("the descriptor sets compiled into the binary are valid");
    // Outermost first: requests that are not gRPC get the web console's assets
    // (crate::console); gRPC-Web calls (the console's, over HTTP/1.1 or HTTP/2) become gRPC
    // calls; every call, gRPC or gRPC-Web, is authenticated and authorized (crate::auth)
    // before it reaches a service.
    let auth = handle.authenticator();
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(crate::console::ConsoleLayer)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(crate::auth::AuthLayer::new(auth.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            rpaflow_proto::v1::auth_service_server::AuthServiceServer::new(
                crate::auth::AuthApi::new(auth),
            ),
        )
        .add_service(FlowServiceServer::new(Api { handle }));
    let served = async move {
        match tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(tls.grpc(listener), shutdown)
                    .await
            }
            None => {
                // Without TCP_NODELAY every streamed reply waits ~40 ms for Nagle's algorithm.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
    };
    tokio::select! {
        served = served => served,
        () = not_serving => Ok(()),
    }
}

/// Binds `addr` (port 0 picks a free port) and returns the listener with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

pub struct Api {
    handle: OrchestratorHandle,
}

/// The namespace a call acts in: its caller's. A request that did not pass the auth layer has
/// none, and is refused.
fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions()
        .get::<crate::auth::Identity>()
        .map(|who| who.namespace.clone())
        .ok_or_else(|| Status::unauthenticated("the call has no authenticated caller"))
}

/// The W3C trace context the caller sent (`traceparent` metadata), if any.
fn caller_trace<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(rpaflow_core::trace_context::TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn file_name(name: &str) -> &str {
    if name.is_empty() { "flow.yaml" } else { name }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlowService for Api {
    async fn register_flow(
        &self,
        req: Request<pb::RegisterFlowRequest>,
    ) -> Result<Response<pb::RegisterFlowResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let registered = self
            .handle
            .register_flow(&ns, file_name(&req.file_name), &req.source)
            .await?;
        let view = self.handle.get_flow(
            &ns,
            rpaflow_core::namespace::local(&registered.record.name),
            registered.record.version,
        )?;
        Ok(Response::new(pb::RegisterFlowResponse {
            flow: Some(convert::flow(&view)),
            created: registered.created,
        }))
    }

    async fn validate_flow(
        &self,
        req: Request<pb::ValidateFlowRequest>,
    ) -> Result<Response<pb::ValidateFlowResponse>, Status> {
        let req = req.into_inner();
        let response = match self
            .handle
            .validate_flow(file_name(&req.file_name), &req.source)
        {
            Ok(parsed) => pb::ValidateFlowResponse {
                diagnostics: vec![],
                definition: Some((&parsed).into()),
            },
            Err(diags) => pb::ValidateFlowResponse {
                diagnostics: diags
                    .0
                    .into_iter()
                    .map(|d| pb::Diagnostic {
                        file: d.file,
                        line: d.line as u32,
                        column: d.column as u32,
                        message: d.message,
                    })
                    .collect(),
                definition: None,
            },
        };
        Ok(Response::new(response))
    }

    async fn get_flow(
        &self,
        req: Request<pb::GetFlowRequest>,
    ) -> Result<Response<pb::Flow>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        Ok(Response::new(convert::flow(&self.handle.get_flow(
            &ns,
            &req.name,
            req.version,
        )?)))
    }

    async fn list_flows(
        &self,
        req: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        let flows = self
            .handle
            .list_flows(&namespace(&req)?)?
            .iter()
            .map(convert::flow)
            .collect();
        Ok(Response::new(pb::ListFlowsResponse { flows }))
    }

    async fn start_run(
        &self,
        req: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let arrived = std::time::SystemTime::now();
        let ns = namespace(&req)?;
        let caller = caller_trace(&req);
        let req = req.into_inner();
        let flow = rpaflow_core::namespace::full_name(&ns, &req.flow).ok_or_else(|| {
            Status::from(Error::NotFound(format!("no flow named `{}`", req.flow)))
        })?;
        let inputs = if req.inputs_json.trim().is_empty() {
            serde_json::Map::new()
        } else {
            match serde_json::from_str(&req.inputs_json) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(_) => {
                    return Err(
                        Error::InvalidArgument("inputs_json must be a JSON object".into()).into(),
                    );
                }
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "inputs_json is not valid JSON: {e}"
                    ))
                    .into());
                }
            }
        };
        let (state, created) = self
            .handle
            .start_run(StartRun {
                flow,
                version: req.version,
                inputs,
                idempotency_key: req.idempotency_key,
                ..StartRun::default()
            })
            .await?;
        crate::spans::run_started(
            &state.run_id,
            crate::spans::Entry::Grpc { method: "StartRun" },
            arrived,
            caller.as_deref(),
            created,
        );
        Ok(Response::new(pb::StartRunResponse {
            run: Some(convert::run(&state)),
            created,
        }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let ns = namespace(&req)?;
        Ok(Response::new(convert::run(
            &self.handle.get_run(&ns, &req.into_inner().run_id).await?,
        )))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let status = match req.status.as_str() {
            "" => None,
            name => Some(RunStatus::from_name(name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown status `{name}` (expected queued, running, succeeded, failed or cancelled)"
                ))
            })?),
        };
        let (runs, next) = self.handle.list_runs(
            &ns,
            &req.flow,
            status,
            req.page_size as usize,
            &req.page_token,
        )?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(convert::run_summary).collect(),
            next_page_token: next,
        }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        Ok(Response::new(convert::run(
            &self
                .handle
                .cancel_run(&ns, &req.run_id, &req.reason)
                .await?,
        )))
    }

    async fn retry_run(
        &self,
        req: Request<pb::RetryRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let ns = namespace(&req)?;
        Ok(Response::new(convert::run(
            &self.handle.retry_run(&ns, &req.into_inner().run_id).await?,
        )))
    }

    async fn signal_run(
        &self,
        req: Request<pb::SignalRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        // An authenticated caller (a token, a certificate, an OIDC token) answers under its own
        // name and role, whatever the request says; with authentication off, the caller has no
        // role and its `by` is taken at its word.
        let (token_name, role) = match req
            .extensions()
            .get::<crate::auth::Identity>()
            .filter(|who| !who.token_id.is_empty())
        {
            Some(who) => (Some(who.name.clone()), who.role.name()),
            None => (None, ""),
        };
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let by = token_name.unwrap_or(req.by);
        let state = self
            .handle
            .signal_run(
                &ns,
                &req.run_id,
                Answer {
                    step: req.step_id,
                    approve: req.approve,
                    comment: req.comment,
                    by,
                    role: role.to_owned(),
                },
            )
            .await?;
        Ok(Response::new(convert::run(&state)))
    }

    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let ns = namespace(&req)?;
        let approvals = self.handle.list_approvals(&ns, &req.into_inner().flow)?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: approvals.iter().map(convert::approval).collect(),
        }))
    }

    async fn set_secret(
        &self,
        req: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let info = self.handle.set_secret(&ns, &req.name, &req.value).await?;
        Ok(Response::new(pb::Secret {
            name: info.name,
            updated_at_ms: info.updated_at_ms,
        }))
    }

    async fn delete_secret(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let ns = namespace(&req)?;
        let deleted = self
            .handle
            .delete_secret(&ns, &req.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeleteSecretResponse { deleted }))
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let secrets = self
            .handle
            .list_secrets(&namespace(&req)?)?
            .into_iter()
            .map(|s| pb::Secret {
                name: s.name,
                updated_at_ms: s.updated_at_ms,
            })
            .collect();
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let run_id = req.run_id.clone();
        let stream = self.handle.watch_run(&ns, &req.run_id, req.from_seq)?;
        let stream = stream.map(move |item| {
            item.map(|e| convert::event(&run_id, &e))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let ns = namespace(&req)?;
        let schedules = self
            .handle
            .list_schedules(&ns, &req.into_inner().flow)
            .await?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: schedules.iter().map(convert::schedule).collect(),
        }))
    }

    async fn pause_schedule(
        &self,
        req: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let view = self
            .handle
            .pause_schedule(&ns, &req.flow, &req.trigger)
            .await?;
        Ok(Response::new(convert::schedule(&view)))
    }

    async fn resume_schedule(
        &self,
        req: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let view = self
            .handle
            .resume_schedule(&ns, &req.flow, &req.trigger)
            .await?;
        Ok(Response::new(convert::schedule(&view)))
    }

    async fn trigger_schedule(
        &self,
        req: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let arrived = std::time::SystemTime::now();
        let ns = namespace(&req)?;
        let caller = caller_trace(&req);
        let req = req.into_inner();
        let (state, created) = self
            .handle
            .trigger_schedule(&ns, &req.flow, &req.trigger)
            .await?;
        crate::spans::run_started(
            &state.run_id,
            crate::spans::Entry::Grpc {
                method: "TriggerSchedule",
            },
            arrived,
            caller.as_deref(),
            created,
        );
        Ok(Response::new(pb::StartRunResponse {
            run: Some(convert::run(&state)),
            created,
        }))
    }
}
