package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the gateway's Prometheus collectors. A nil *Metrics records
// nothing, so tests and embedders can leave it out.
type Metrics struct {
	sessions        *prometheus.GaugeVec
	sessionsOpened  *prometheus.CounterVec
	messagesIn      prometheus.Counter
	messagesOut     prometheus.Counter
	bytesOut        prometheus.Counter
	slowCloses      prometheus.Counter
	brokerUp        prometheus.Gauge
	brokerReconnect prometheus.Counter
	publishes       *prometheus.CounterVec
	latency         prometheus.Histogram
	forwards        *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cometgate_sessions", Help: "Open sessions by transport.",
		}, []string{"transport"}),
		sessionsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_sessions_opened_total", Help: "Sessions opened by transport.",
		}, []string{"transport"}),
		messagesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_messages_in_total", Help: "Messages received from the broker (once per message and subscription pattern).",
		}),
		messagesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_messages_out_total", Help: "Message deliveries written to clients.",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_bytes_out_total", Help: "Bytes written to clients, framing included.",
		}),
		slowCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_slow_consumer_closes_total", Help: "Sessions closed because their queue overflowed.",
		}),
		brokerUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cometgate_broker_up", Help: "1 while the broker connection is up.",
		}),
		brokerReconnect: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_broker_reconnects_total", Help: "Times the broker connection came back after a loss.",
		}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_publishes_total", Help: "Publishes by source (api, client) and result (ok, error).",
		}, []string{"source", "result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cometgate_delivery_latency_seconds",
			Help:    "From a message's arrival from the broker to its write to a client.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_forwarded_requests_total",
			Help: "Requests for a session of another node, proxied to that node, by result (ok: the owner answered; error: it could not be reached).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.sessions, m.sessionsOpened, m.messagesIn, m.messagesOut, m.bytesOut,
		m.slowCloses, m.brokerUp, m.brokerReconnect, m.publishes, m.latency, m.forwards)
	return m
}

func (m *Metrics) sessionOpened(transport string) {
	if m != nil {
		m.sessions.WithLabelValues(transport).Inc()
		m.sessionsOpened.WithLabelValues(transport).Inc()
	}
}

func (m *Metrics) sessionClosed(transport string, d Disconnect) {
	if m != nil {
		m.sessions.WithLabelValues(transport).Dec()
		if d == DisconnectSlow {
			m.slowCloses.Inc()
		}
	}
}

func (m *Metrics) received() {
	if m != nil {
		m.messagesIn.Inc()
	}
}

func (m *Metrics) wrote(msgs, bytes int) {
	if m != nil {
		m.messagesOut.Add(float64(msgs))
		m.bytesOut.Add(float64(bytes))
	}
}

func (m *Metrics) observeLatency(seconds float64) {
	if m != nil {
		m.latency.Observe(seconds)
	}
}

func (m *Metrics) brokerState(up, reconnected bool) {
	if m != nil {
		if up {
			m.brokerUp.Set(1)
		} else {
			m.brokerUp.Set(0)
		}
		if reconnected {
			m.brokerReconnect.Inc()
		}
	}
}

func (m *Metrics) published(source string, err error) {
	if m != nil {
		result := "ok"
		if err != nil {
			result = "error"
		}
		m.publishes.WithLabelValues(source, result).Inc()
	}
}

// Forwarded counts one request proxied to the node that owns its session;
// ok is false when that node could not be reached. Safe on a nil *Metrics.
func (m *Metrics) Forwarded(ok bool) {
	if m != nil {
		result := "ok"
		if !ok {
			result = "error"
		}
		m.forwards.WithLabelValues(result).Inc()
	}
}
