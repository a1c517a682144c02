//! WebSocket calls: the app accepts (or refuses) the connection before the upgrade is
//! answered, then messages flow both ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};

use crate::{request_head, response_headers, text, Call, Endpoint, FromApp, Gateway, RequestKind, Route, ToApp, WsMessage};

pub(crate) async fn handle(gw: Arc<Gateway>, endpoint: Endpoint, route: Route, client: SocketAddr, req: Request) -> Response {
    let subprotocols: Vec<String> = req
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let head = request_head(&req, &route, client, RequestKind::WebSocket { subprotocols });
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let mut call = match gw.backend.start(&endpoint, head).await {
        Ok(c) => c,
        Err(e) => return text(e.status, &format!("{}\n", e.message)),
    };
    if call.to_app.send(ToApp::WsConnect).await.is_err() {
        return text(502, "The app went away before accepting the WebSocket\n");
    }
    // The app answers the handshake: accept, or close (refused).
    let answer = tokio::time::timeout(gw.config.redirect_after, async {
        loop {
            match call.from_app.recv().await {
                Some(FromApp::WsAccept { subprotocol, headers }) => return Ok((subprotocol, headers)),
                Some(FromApp::WsClose { .. }) => return Err(text(403, "The app refused the WebSocket connection\n")),
                Some(FromApp::Failed(message)) => {
                    tracing::info!(call_id = call.id, "WebSocket call failed before accepting: {message}");
                    return Err(text(500, "Internal Server Error\n"));
                }
                // An HTTP response instead of an accept (ASGI's denial response extension).
                Some(FromApp::Start { status, .. }) => return Err(text(status, "The app refused the WebSocket connection\n")),
                Some(FromApp::Finished) | None => return Err(text(500, "The app finished without accepting the WebSocket\n")),
                Some(_) => continue,
            }
        }
    })
    .await;
    let (subprotocol, headers) = match answer {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(response)) => return response,
        Err(_) => return text(504, "The app did not accept the WebSocket in time\n"),
    };
    let upgrade = match subprotocol {
        Some(p) => upgrade.protocols([p]),
        None => upgrade,
    };
    let mut response = upgrade.on_upgrade(move |socket| bridge(socket, call));
    response_headers(&headers, response.headers_mut());
    response
}

/// Moves messages between the client's socket and the app until one side closes.
async fn bridge(socket: WebSocket, mut call: Call) {
    let (mut to_client, mut from_client) = socket.split();
    loop {
        tokio::select! {
            msg = from_client.next() => {
                let event = match msg {
                    Some(Ok(Message::Text(t))) => ToApp::WsReceive(WsMessage::Text(t.as_str().to_string())),
                    Some(Ok(Message::Binary(b))) => ToApp::WsReceive(WsMessage::Binary(b)),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => ToApp::WsDisconnect { code: frame.map_or(1005, |f| f.code) },
                    Some(Err(_)) | None => ToApp::WsDisconnect { code: 1006 },
                };
                let closing = matches!(event, ToApp::WsDisconnect { .. });
                if call.to_app.send(event).await.is_err() || closing {
                    return;
                }
            }
            event = call.from_app.recv() => {
                let msg = match event {
                    Some(FromApp::WsSend(WsMessage::Text(t))) => Message::Text(t.into()),
                    Some(FromApp::WsSend(WsMessage::Binary(b))) => Message::Binary(b),
                    Some(FromApp::WsClose { code, reason }) => {
                        let _ = to_client.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        return;
                    }
                    Some(FromApp::Finished) | None => {
                        let _ = to_client.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
                        return;
                    }
                    Some(FromApp::Failed(message)) => {
                        tracing::info!(call_id = call.id, "WebSocket call failed: {message}");
                        let _ = to_client.send(Message::Close(Some(CloseFrame { code: 1011, reason: "internal error".into() }))).await;
                        return;
                    }
                    Some(_) => continue,
                };
                if to_client.send(msg).await.is_err() {
                    let _ = call.to_app.send(ToApp::WsDisconnect { code: 1006 }).await;
                    return;
                }
            }
        }
    }
}
