//! The heartbeat of websocket-echo-server, shared by the echo and chat
//! servers: the library's [`ferrows::keepalive`] (one timer for all
//! connections, whose channel also announces the shutdown).

pub(crate) use ferrows::keepalive::{Liveness, OnBeat, close_for_shutdown, heartbeat};
