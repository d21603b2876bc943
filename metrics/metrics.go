// Package metrics holds chatd's Prometheus metrics. One Metrics value is made in main and handed
// to the parts that count (no package-level registry), so tests can make their own.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are all of chatd's metrics. A nil *Metrics is valid and counts nothing, so parts can
// be built without it in tests.
type Metrics struct {
	HTTPRequests  *prometheus.CounterVec   // route, method, status
	HTTPDuration  *prometheus.HistogramVec // route, method
	Appended      *prometheus.CounterVec   // type
	AppendErrors  *prometheus.CounterVec   // reason: conflict, unavailable
	Checkpoint    prometheus.Gauge
	LagEvents     prometheus.Gauge
	LagSeconds    prometheus.Gauge
	BatchSize     prometheus.Histogram
	BatchDuration prometheus.Histogram
	ProjectorErrs prometheus.Counter
	ParkedEvents  prometheus.Gauge
	Pushes        prometheus.Counter
	PushErrors    prometheus.Counter
	WSConnections prometheus.Gauge
	WSFrames      prometheus.Counter
	WSSlowCloses  prometheus.Counter
	WSPushGaps    prometheus.Counter
	ReadErrors    prometheus.Counter
}

// New makes the metrics and registers them, with Go runtime and process metrics, on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatd_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "chatd_http_request_duration_seconds", Help: "HTTP request latency by route and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route", "method"}),
		Appended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatd_events_appended_total", Help: "Events appended to the stream, by type.",
		}, []string{"type"}),
		AppendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatd_append_errors_total", Help: "Appends refused (conflict: an expectation failed and the command was decided again) or failed (unavailable: NATS).",
		}, []string{"reason"}),
		Checkpoint: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatd_projector_checkpoint", Help: "Stream sequence up to which the read models are committed (as this node knows it).",
		}),
		LagEvents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatd_projector_lag_events", Help: "Events in the stream after the last applied batch, when it was applied.",
		}),
		LagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatd_projector_lag_seconds", Help: "Age of the newest event of the last applied batch when it was committed.",
		}),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chatd_projector_batch_events", Help: "Events per projector transaction.",
			Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500},
		}),
		BatchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chatd_projector_batch_duration_seconds", Help: "Time to apply and commit one projector batch.",
			Buckets: prometheus.ExponentialBuckets(.0005, 2, 14),
		}),
		ProjectorErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_projector_errors_total", Help: "Projector restarts after a failure (PostgreSQL or NATS).",
		}),
		ParkedEvents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatd_projector_parked_events", Help: "Events the projector parked as poison (see parked_events); anything above 0 needs an operator.",
		}),
		Pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_pushes_total", Help: "Frames published to per-user push subjects.",
		}),
		PushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_push_errors_total", Help: "Push publishes that failed.",
		}),
		WSConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatd_websocket_connections", Help: "Open WebSocket connections on this node.",
		}),
		WSFrames: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_websocket_frames_sent_total", Help: "Frames written to WebSocket clients.",
		}),
		WSSlowCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_websocket_slow_closes_total", Help: "Connections closed because the client fell behind (4008).",
		}),
		WSPushGaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_websocket_push_gaps_total", Help: "Connections closed because a push to them never arrived (4008): NATS lost it.",
		}),
		ReadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatd_read_model_unavailable_total", Help: "Requests answered 503 because a dependency was unavailable.",
		}),
	}
	reg.MustRegister(m.HTTPRequests, m.HTTPDuration, m.Appended, m.AppendErrors, m.Checkpoint, m.LagEvents,
		m.LagSeconds, m.BatchSize, m.BatchDuration, m.ProjectorErrs, m.ParkedEvents, m.Pushes, m.PushErrors, m.WSConnections,
		m.WSFrames, m.WSSlowCloses, m.WSPushGaps, m.ReadErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// The methods below are what the parts call; each is a no-op on a nil *Metrics.

// Request counts one HTTP request.
func (m *Metrics) Request(route, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	method = knownMethod(method)
	m.HTTPRequests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.HTTPDuration.WithLabelValues(route, method).Observe(d.Seconds())
	if status == 503 {
		m.ReadErrors.Inc()
	}
}

// knownMethod is method if it is a standard HTTP method, else "other": any token is a valid
// method on the wire, and each label value is a series kept for the life of the process.
func knownMethod(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "other"
}

// Append counts an append: err nil, a conflict (expectation failed), or a failure.
func (m *Metrics) Append(typ string, conflict bool, err error) {
	if m == nil {
		return
	}
	switch {
	case err == nil:
		m.Appended.WithLabelValues(typ).Inc()
	case conflict:
		m.AppendErrors.WithLabelValues("conflict").Inc()
	default:
		m.AppendErrors.WithLabelValues("unavailable").Inc()
	}
}

// Batch records one committed projector batch.
func (m *Metrics) Batch(events int, took time.Duration, checkpoint, pending uint64, newest time.Time) {
	if m == nil {
		return
	}
	m.BatchSize.Observe(float64(events))
	m.BatchDuration.Observe(took.Seconds())
	m.Checkpoint.Set(float64(checkpoint))
	m.LagEvents.Set(float64(pending))
	m.LagSeconds.Set(max(time.Since(newest).Seconds(), 0))
}

// Position records the checkpoint as a standby projector learns it.
func (m *Metrics) Position(checkpoint uint64) {
	if m == nil {
		return
	}
	m.Checkpoint.Set(float64(checkpoint))
}

// ProjectorFailed counts a projector restart.
func (m *Metrics) ProjectorFailed() {
	if m != nil {
		m.ProjectorErrs.Inc()
	}
}

// Parked records how many events are parked.
func (m *Metrics) Parked(n int64) {
	if m != nil {
		m.ParkedEvents.Set(float64(n))
	}
}

// Pushed counts a published push, or a failed one.
func (m *Metrics) Pushed(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.PushErrors.Inc()
	} else {
		m.Pushes.Inc()
	}
}

// Connections moves the WebSocket connection gauge by delta.
func (m *Metrics) Connections(delta int) {
	if m != nil {
		m.WSConnections.Add(float64(delta))
	}
}

// FrameSent counts a frame written to a client.
func (m *Metrics) FrameSent() {
	if m != nil {
		m.WSFrames.Inc()
	}
}

// SlowClose counts a client closed for falling behind.
func (m *Metrics) SlowClose() {
	if m != nil {
		m.WSSlowCloses.Inc()
	}
}

// PushGap counts a client closed because a push to it was lost on the way.
func (m *Metrics) PushGap() {
	if m != nil {
		m.WSPushGaps.Inc()
	}
}
