//! GetContainerEvents: the engine's container events, for pods'
//! containers, as the kubelet's evented PLEG reads them.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use toted::engine::Engine;

use crate::api;

fn event_type(action: &str) -> Option<api::ContainerEventType> {
    Some(match action {
        "create" => api::ContainerEventType::ContainerCreatedEvent,
        "start" => api::ContainerEventType::ContainerStartedEvent,
        "die" => api::ContainerEventType::ContainerStoppedEvent,
        "destroy" => api::ContainerEventType::ContainerDeletedEvent,
        _ => return None,
    })
}

pub(crate) fn container_events(
    engine: Arc<Engine>,
) -> Pin<Box<dyn Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>> {
    let (_, mut events) = engine.events.subscribe(None);
    let (out, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Some(kind) = event_type(&event.action).filter(|_| event.kind == "container") else { continue };
            // A removed container is gone from the records: its pod is
            // found through the event's own attributes, else not at all.
            let record = engine.container(&event.id).ok();
            let pod_id = record.as_ref().map(|r| r.sandbox.clone()).or_else(|| event.attributes.get("pod").cloned());
            let Some(pod) = pod_id.and_then(|id| engine.pod(&id).ok()) else { continue };
            let response = api::ContainerEventResponse {
                container_id: event.id.clone(),
                container_event_type: kind as i32,
                created_at: i64::try_from(event.time_nanos).unwrap_or(i64::MAX),
                pod_sandbox_status: crate::pods::status(&pod, false).status,
                containers_statuses: record
                    .iter()
                    .filter_map(|r| crate::containers::status(&engine, r, false).status)
                    .collect(),
            };
            if out.send(Ok(response)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}
