//! The one integration test binary: real nodes, real WebSocket clients, real `redis-server`
//! processes, one module per area. One binary links the crate once instead of once per area;
//! the shared builders live in `support`. Unit tests stay next to the code in `src/`.

mod support;

mod admin;
mod architecture;
mod auth;
mod cli;
mod coalesce;
mod compression;
mod config;
mod conflate;
mod console;
mod control;
mod fuzz_regressions;
mod history;
mod hooks;
mod hooks_connect;
mod https_backend;
mod limits;
mod presence;
mod presence_info;
mod presence_node_loss;
mod protocol;
mod redis_broker;
mod redis_broker_alone;
mod redis_cluster;
mod redis_cluster_support;
mod redis_history;
mod refresh;
mod smoke;
mod sse;
mod validation;
mod webhooks;
