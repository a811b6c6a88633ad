//! Set-up shared by the store's integration tests: a route with ranges planned, and a lease request.

use std::time::Duration;

use courier_core::{Ordering, RangeKind};
use courier_store::{LeaseRequest, PlanRequest, RouteSpec, Store};

/// Route `name` reading `name-topic` into destination `d`.
pub fn spec(name: &str) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        topic: format!("{name}-topic"),
        destination: "d".into(),
    }
}

/// Registers route `name` with partition 0 from offset 0 and carves it into ranges of 100 up to
/// `high_watermark`.
pub async fn route_with_ranges(store: &Store, name: &str, high_watermark: i64) {
    store
        .ensure_route(&spec(name), &[(0, 0)])
        .await
        .expect("route");
    store
        .plan(&PlanRequest {
            route: name.into(),
            partition: 0,
            high_watermark,
            range_size: 100,
            max_new_ranges: 1000,
            max_tail_age: Duration::ZERO,
        })
        .await
        .expect("plan");
}

/// Up to 100 ranges of `route` of `kind`, for worker `w`, for a minute.
pub fn lease(route: &str, kind: RangeKind) -> LeaseRequest {
    LeaseRequest::one_route(
        route,
        Ordering::None,
        "w",
        100,
        Duration::from_secs(60),
        kind,
    )
}
