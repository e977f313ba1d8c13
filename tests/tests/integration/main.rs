//! The integration tests, one module per area, built as one test binary (one link instead of
//! eighteen on two cores). They run against the local control plane (`bash tests/cluster/up`);
//! `support` and `browser` need no cluster. Run one area with `cargo test -p driftless-tests --test integration faults::`.

mod agent_run;
mod apply_order;
mod browser;
mod cli;
mod control_plane;
mod faults;
mod git_faults;
mod helm_chart;
mod helm_render;
mod kustomize;
mod leader_election;
mod live_state;
mod notifications;
mod observability;
mod ownership;
mod plan;
mod prometheus;
mod prune_safeguards;
mod real_repositories;
mod recovery;
mod seed_manifests;
mod shared_watches;
mod ssh_source;
mod status_page;
mod support;
mod sync_errors;
mod sync_example_repo;
