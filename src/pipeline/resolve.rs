//! A raw StatsD name and its tags resolved to a series: tags split off the name, the mapping
//! rules applied, the name and labels made Prometheus-safe ([`crate::naming`]), and the series
//! found or created in the store's registry. Runs on a writer's cache miss only; its result is
//! cached ([`super::cache::Entry`]).

use std::sync::Arc;
use std::time::Duration;

use super::Writer;
use super::cache::Entry;
use crate::config::Naming;
use crate::config::mapping::{HistogramKind, Mapped};
use crate::naming::{self, FamilyKind};
use crate::parse::tags::{self, TagErrors};
use crate::parse::{MetricType, Sample, Special};
use crate::store::{Layout, NewSeries, Refusal};

impl Writer {
    /// Resolves a sample's raw name and tags to a series (the cache-miss path).
    pub(super) fn resolve(&mut self, s: &Sample<'_>) -> Entry {
        let snap = self.snap.clone();
        let cfg = &snap.config;
        let mut errors = TagErrors::default();
        let mut tags = Vec::new();
        let base = tags::split_name_tags(s.name, &cfg.parse, &mut tags, &mut errors);
        for t in s.tags.iter() {
            tags::one_tag(t, ':', &mut tags, &mut errors);
        }
        if cfg.parse.container_id_label
            && let Some(c) = s.container_id.filter(|c| !c.is_empty())
        {
            tags.push(("container_id".into(), c.into()));
        }
        let refused = |reason, rule| Entry::Refused {
            reason,
            rule,
            tag_errors: errors,
        };
        if base.is_empty() {
            return refused(Refusal::EmptyName, 0);
        }
        let observer = s.kind.is_observer();
        let default_scale = if s.kind == MetricType::Timer {
            0.001
        } else {
            1.0
        };
        let default_buckets = || -> Arc<[f64]> {
            let b = if s.kind == MetricType::Timer {
                &cfg.defaults.timer_buckets
            } else {
                &cfg.defaults.histogram_buckets
            };
            Arc::from(b.as_slice())
        };
        let exporter_names = cfg.defaults.naming == Naming::StatsdExporter;
        let metric_name = |n: &str| {
            if exporter_names {
                naming::exporter_metric_name(n)
            } else {
                naming::metric_name(n)
            }
        };
        if exporter_names {
            for (k, _) in &mut tags {
                *k = naming::exporter_metric_name(k);
            }
        }
        let mut about = None;
        let mut native = crate::config::mapping::NativeSpec::default();
        let (name, ttl, buckets, help, scale, summary) = match snap.mapper.map(&base, s.kind) {
            Mapped::Unmapped => {
                self.stats.unmapped += 1;
                (
                    metric_name(&base),
                    cfg.defaults.ttl,
                    None,
                    None,
                    default_scale,
                    cfg.defaults.summary(None, None, None),
                )
            }
            Mapped::Drop { rule } => return refused(Refusal::MappingDrop, rule),
            Mapped::Map {
                name,
                labels,
                ttl,
                buckets,
                help,
                scale,
                observer,
                quantiles,
                window,
                honor_labels,
                about: rule,
                native: spec,
                ..
            } => {
                about = Some(rule);
                native = spec;
                if name.is_empty() {
                    return refused(Refusal::InvalidMappedName, 0);
                }
                if honor_labels {
                    // Later duplicates win in `render_labels`: the tags go last.
                    tags.splice(0..0, labels.into_iter().filter(|(_, v)| !v.is_empty()));
                } else {
                    for (k, v) in labels {
                        if v.is_empty() {
                            // An empty label is no label, and it still overrides the tag.
                            tags.retain(|(t, _)| *t != k);
                        } else {
                            tags.push((k, v));
                        }
                    }
                }
                (
                    metric_name(&name),
                    ttl.unwrap_or(cfg.defaults.ttl),
                    buckets,
                    help,
                    // After a timer's conversion to seconds, as statsd_exporter applies it.
                    scale.map_or(default_scale, |f| f * default_scale),
                    cfg.defaults.summary(observer, quantiles.as_ref(), window),
                )
            }
        };
        let (family, kind, layout) = match s.kind {
            MetricType::Counter if exporter_names => (name, FamilyKind::Counter, Layout::Counter),
            MetricType::Counter => (
                naming::counter_family(name),
                FamilyKind::Counter,
                Layout::Counter,
            ),
            MetricType::Gauge => (name, FamilyKind::Gauge, Layout::Gauge),
            MetricType::Set => (name, FamilyKind::Set, Layout::Set),
            _ => match &summary {
                Some(sm) => {
                    let half_ms = u32::try_from((sm.window / 2).as_millis()).unwrap_or(u32::MAX);
                    (name, FamilyKind::Summary, Layout::Summary(half_ms))
                }
                None => (name, FamilyKind::Histogram, Layout::Histogram(0)),
            },
        };
        // A rule that names a family without `help` is named in the generated one.
        let help = help.or_else(|| {
            about.map(|a| {
                let what = kind.default_help().trim_end_matches('.');
                Arc::from(format!("{what}; named by {a}."))
            })
        });
        // The families of events and service checks are tallyd's: no line may add to them.
        let dd = &cfg.dogstatsd;
        if naming::is_reserved(
            &family,
            kind,
            &[&dd.events_family, &dd.service_checks_family],
        ) {
            return refused(Refusal::ReservedName, 0);
        }
        let labels = naming::render_labels(tags, kind, &mut errors);
        let (buckets, window) = match &summary {
            Some(sm) if observer => (Some(sm.quantiles.clone()), sm.window),
            _ => (
                observer.then(|| buckets.unwrap_or_else(default_buckets)),
                Duration::ZERO,
            ),
        };
        let (layout, buckets) = match (layout, buckets) {
            (Layout::Histogram(_), Some(b)) => {
                let d = &cfg.defaults;
                let kind = native.histograms.unwrap_or(d.histograms);
                let classic: Arc<[f64]> = match kind {
                    HistogramKind::Native => Arc::from([]),
                    _ => b,
                };
                match kind {
                    HistogramKind::Classic => {
                        (Layout::Histogram(classic.len() as u8), Some(classic))
                    }
                    _ => {
                        let factor = native.factor.unwrap_or(d.native_bucket_factor);
                        let window = native.max_buckets.unwrap_or(d.native_max_buckets);
                        // The native layout's bounds end with its zero threshold.
                        let mut bounds = classic.to_vec();
                        bounds.push(d.native_zero_threshold);
                        (
                            Layout::Native(
                                classic.len() as u8,
                                crate::store::native::schema_for(factor),
                                window,
                            ),
                            Some(Arc::from(bounds)),
                        )
                    }
                }
            }
            (l, b) => (l, b),
        };
        self.create(
            &family, kind, &labels, layout, ttl, help, buckets, window, scale, errors, s.kind,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        family: &str,
        kind: FamilyKind,
        labels: &str,
        layout: Layout,
        ttl: Duration,
        help: Option<Arc<str>>,
        buckets: Option<Arc<[f64]>>,
        window: Duration,
        scale: f64,
        tag_errors: TagErrors,
        sample: MetricType,
    ) -> Entry {
        let r = self.store.find_or_create(NewSeries {
            family,
            kind,
            labels,
            layout,
            ttl,
            help,
            buckets,
            window,
            limits: &self.snap.config.limits,
        });
        match r {
            // The family's layout and bounds, which its first series fixed.
            Ok(found) => Entry::Series {
                offset: found.offset,
                layout: found.layout,
                kind: sample,
                scale,
                rate: 1.0,
                buckets: if matches!(found.layout, Layout::Histogram(_) | Layout::Native(..)) {
                    found.buckets
                } else {
                    None
                },
                tag_errors,
            },
            Err(reason) => Entry::Refused {
                reason,
                rule: 0,
                tag_errors,
            },
        }
    }

    /// Aggregates an event or service check.
    pub(super) fn special(&mut self, sp: &Special<'_>) {
        let (kind, name, tags, extra, value) = match sp {
            Special::Event {
                alert_type,
                priority,
                tags,
            } => {
                self.stats.events += 1;
                (b'E', *alert_type, tags, *priority, 1.0)
            }
            Special::ServiceCheck { name, status, tags } => {
                self.stats.service_checks += 1;
                (b'S', *name, tags, "", f64::from(*status))
            }
        };
        let sample = Sample {
            name,
            kind: if kind == b'E' {
                MetricType::Counter
            } else {
                MetricType::Gauge
            },
            value,
            delta: false,
            rate: 1.0,
            member: "",
            tags: *tags,
            container_id: None,
        };
        self.build_key(kind, name, tags.as_slice(), extra);
        // Events and checks are counted on their own, not as samples.
        self.settle_key(&sample, false, |w| {
            let mut errors = TagErrors::default();
            let mut labels = Vec::new();
            for t in tags.iter() {
                tags::one_tag(t, ':', &mut labels, &mut errors);
            }
            let snap = w.snap.clone();
            let dd = &snap.config.dogstatsd;
            let (family, fk, layout, fixed) = if kind == b'E' {
                (
                    dd.events_family.as_str(),
                    FamilyKind::Counter,
                    Layout::Counter,
                    [("alert_type", name), ("priority", extra)],
                )
            } else {
                (
                    dd.service_checks_family.as_str(),
                    FamilyKind::Gauge,
                    Layout::Gauge,
                    [("check", name), ("", "")],
                )
            };
            // The fixed labels go last so a tag cannot override them.
            labels.extend(
                fixed
                    .iter()
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            let labels = naming::render_labels(labels, fk, &mut errors);
            let ttl = w.snap.config.defaults.ttl;
            w.create(
                family,
                fk,
                &labels,
                layout,
                ttl,
                None,
                None,
                Duration::ZERO,
                1.0,
                errors,
                sample.kind,
            )
        });
    }
}
