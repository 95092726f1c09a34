//! Route matching: from a request to the first matching route of its
//! virtual host, in Istio's order, without scanning every route.

mod matcher;
mod request;
mod table;
mod weighted;

pub use matcher::CompiledMatcher;
pub use request::RequestView;
pub use table::{RouteHit, RouteTable, RouteTableError};
pub use weighted::pick_weighted;
