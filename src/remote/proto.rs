//! The remote write 1.0 messages, as `prometheus/prompb` defines them (`remote.proto`,
//! `types.proto`), declared for prost, which encodes them: only the fields tallyd sends.
//! Field numbers are the protocol's and must not change.

/// `prometheus.WriteRequest`: one request's series.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// `repeated TimeSeries timeseries = 1`.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: one series' labels (sorted by name) and samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// `repeated Label labels = 1`.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// `repeated Sample samples = 2`.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct Label {
    /// `string name = 1`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `string value = 2`.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    /// `double value = 1`.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// `int64 timestamp = 2`: milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The value Prometheus writes to end a series (a NaN no computation produces).
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
