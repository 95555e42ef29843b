//! Pure analysis over recorded history: trend and forecast of a numeric
//! series (`trend`), uptime with coverage of a probe (`uptime`). No I/O and
//! no clock reads; callers pass the samples and `now`.

pub mod trend;
pub mod uptime;

pub use trend::{Fit, Forecast, ForecastInput, Point, Trend, TrendClass, fit, forecast, trend};
pub use uptime::{Interval, Transition, Uptime, uptime};
