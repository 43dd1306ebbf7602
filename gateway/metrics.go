package gateway

import (
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the gateway's Prometheus collectors. A nil *Metrics records
// nothing, so tests and embedders can leave it out.
//
// Transport labels are the names the client uses (websocket, sse,
// xhr_stream, poll, htmlfile, jsonp, sockjs, tcp). What a session counts
// on every write (deliveries, bytes, latency) is resolved once per
// transport (transportMetrics) rather than looked up by label at each
// write; namespace labels are the configured namespace patterns, so their
// number is bounded by the configuration, never by what clients send.
type Metrics struct {
	sessions       *prometheus.GaugeVec
	sessionsOpened *prometheus.CounterVec
	closes         *prometheus.CounterVec
	subscriptions  *prometheus.GaugeVec
	messagesIn     prometheus.Counter
	messagesOut    *prometheus.CounterVec
	bytesOut       *prometheus.CounterVec
	latency        latencyCollector
	slowCloses     prometheus.Counter
	dropped        *prometheus.CounterVec
	brokerUp       prometheus.Gauge
	brokerReconn   prometheus.Counter
	publishes      *prometheus.CounterVec
	publishLatency *prometheus.HistogramVec
	forwards       *prometheus.CounterVec
	refusals       [numRefusals]prometheus.Counter // by Refusal, resolved once

	transports sync.Map // transport name → *transportMetrics
}

// transportMetrics are one transport's collectors, resolved once: a
// session keeps a pointer to its transport's and counts without lookups.
// A nil *transportMetrics records nothing.
type transportMetrics struct {
	sessions      prometheus.Gauge
	opened        prometheus.Counter
	subscriptions prometheus.Gauge
	deliveries    prometheus.Counter
	bytes         prometheus.Counter
	latency       *latencyHistogram
}

// latencyBuckets span a loopback write (100 µs) to a client that fell
// seconds behind.
var latencyBuckets = [...]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cometgate_sessions", Help: "Open sessions by transport.",
		}, []string{"transport"}),
		sessionsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_sessions_opened_total", Help: "Sessions opened by transport.",
		}, []string{"transport"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_session_closes_total",
			Help: "Sessions ended, by transport and close code (0: the client went away; 3xxx: told to reconnect, such as 3000 drain, 3001 slow consumer, 3002 expired, 3004 token expired; 4xxx: told not to; see gateway/disconnect.go).",
		}, []string{"transport", "code"}),
		subscriptions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cometgate_subscriptions", Help: "Active subscriptions of the open sessions, by transport.",
		}, []string{"transport"}),
		messagesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_messages_in_total", Help: "Messages received from the broker (once per message and subscription pattern).",
		}),
		messagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_messages_out_total", Help: "Message deliveries written to clients, by transport.",
		}, []string{"transport"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_bytes_out_total", Help: "Bytes written to clients, framing included, by transport.",
		}, []string{"transport"}),
		slowCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_slow_consumer_closes_total", Help: "Sessions closed because their queue overflowed (policy disconnect).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_messages_dropped_total",
			Help: "Queued messages a slow session never got, by namespace and slow-consumer policy (drop_oldest: dropped with a gap packet; conflate: replaced by a newer message on the same channel).",
		}, []string{"namespace", "policy"}),
		brokerUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cometgate_broker_up", Help: "1 while the broker connection is up.",
		}),
		brokerReconn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cometgate_broker_reconnects_total", Help: "Times the broker connection came back after a loss.",
		}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_publishes_total", Help: "Publishes by source (api, client) and result (ok, error).",
		}, []string{"source", "result"}),
		publishLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cometgate_publish_duration_seconds",
			Help:    "From a publish's hand-over to the broker to its confirmation (or failure), by source (api, client).",
			Buckets: latencyBuckets[:],
		}, []string{"source"}),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_forwarded_requests_total",
			Help: "Requests for a session of another node, proxied to that node, by result (ok: the owner answered; error: it could not be reached).",
		}, []string{"result"}),
	}
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cometgate_refusals_total",
		Help: "Requests refused and sessions closed by the admission gate and the rate limits, by reason (" + refusalList() + ").",
	}, []string{"reason"})
	for r := range numRefusals {
		// Every reason exists from the start (at 0): a dashboard shows
		// a rate, not a gap, before the first refusal.
		m.refusals[r] = refusals.WithLabelValues(r.String())
	}
	m.latency = latencyCollector{m: m, desc: prometheus.NewDesc("cometgate_delivery_latency_seconds",
		"From a message's arrival from the broker to its write to a client, by transport.",
		[]string{"transport"}, nil)}
	reg.MustRegister(m.sessions, m.sessionsOpened, m.closes, m.subscriptions, m.messagesIn,
		m.messagesOut, m.bytesOut, m.latency, m.slowCloses, m.dropped, m.brokerUp,
		m.brokerReconn, m.publishes, m.publishLatency, m.forwards, refusals)
	return m
}

// Refusal is why the admission gate refused a request, or a rate limit
// closed a session: the reason label of cometgate_refusals_total. The set
// is fixed, so the label's values are bounded whatever clients send.
type Refusal uint8

// The refusals, each a reason label.
const (
	RefusedOrigin              Refusal = iota // origin: a browser page from an Origin the node does not allow
	RefusedHost                               // host: a Host the node does not serve (421)
	RefusedToken                              // token: no valid token (or auth webhook answer) where one is needed
	RefusedCookieWithoutOrigin                // cookie_without_origin: a callback transport's request that would use the token cookie
	RefusedPrincipal                          // principal: a request for a session of another principal
	RefusedIPLimit                            // ip_limit: the address (IPv4, IPv6 /64) holds as many sessions as it may
	RefusedIPRate                             // ip_rate: the address opens new sessions faster than it may
	RefusedNodeRate                           // node_rate: the node opens no more new sessions per second
	RefusedGlobalLimit                        // global_limit: the node holds as many sessions as it may
	RefusedShutdown                           // shutdown: the node is draining
	RefusedFrameRate                          // frame_rate: a session sent frames too fast (closed with 4029)
	RefusedPublishRate                        // publish_rate: a session published too fast (closed with 4029)
	RefusedForwardSignature                   // forward_signature: a forwarded request without the cluster's signature
	RefusedAPIKey                             // api_key: a publish API request without a valid key where one is needed
	RefusedRevoked                            // revoked: a credential a revocation refuses
	numRefusals
)

var refusalNames = [numRefusals]string{
	"origin", "host", "token", "cookie_without_origin", "principal", "ip_limit", "ip_rate",
	"node_rate", "global_limit", "shutdown", "frame_rate", "publish_rate", "forward_signature", "api_key", "revoked",
}

func (r Refusal) String() string { return refusalNames[r] }

func refusalList() string { return strings.Join(refusalNames[:], ", ") }

// Refused counts one refusal. Safe on a nil *Metrics and for concurrent
// use; it looks up nothing.
func (m *Metrics) Refused(r Refusal) {
	if m != nil {
		m.refusals[r].Inc()
	}
}

// forTransport returns name's collectors, creating them on first use.
func (m *Metrics) forTransport(name string) *transportMetrics {
	if m == nil {
		return nil
	}
	if tm, ok := m.transports.Load(name); ok {
		return tm.(*transportMetrics)
	}
	tm, _ := m.transports.LoadOrStore(name, &transportMetrics{
		sessions:      m.sessions.WithLabelValues(name),
		opened:        m.sessionsOpened.WithLabelValues(name),
		subscriptions: m.subscriptions.WithLabelValues(name),
		deliveries:    m.messagesOut.WithLabelValues(name),
		bytes:         m.bytesOut.WithLabelValues(name),
		latency:       new(latencyHistogram),
	})
	return tm.(*transportMetrics)
}

func (tm *transportMetrics) sessionOpened() {
	if tm != nil {
		tm.sessions.Inc()
		tm.opened.Inc()
	}
}

func (tm *transportMetrics) subscribed(delta int) {
	if tm != nil {
		tm.subscriptions.Add(float64(delta))
	}
}

func (tm *transportMetrics) wrote(msgs, bytes int) {
	if tm != nil {
		tm.deliveries.Add(float64(msgs))
		tm.bytes.Add(float64(bytes))
	}
}

func (m *Metrics) sessionClosed(tm *transportMetrics, transport string, d Disconnect) {
	if m == nil {
		return
	}
	tm.sessions.Dec()
	m.closes.WithLabelValues(transport, strconv.Itoa(d.Code)).Inc()
	if d == DisconnectSlow {
		m.slowCloses.Inc()
	}
}

// droppedCounter is the counter of messages namespace's sessions lost to
// policy; nil (counting nothing) without metrics or for a policy that
// drops nothing.
func (m *Metrics) droppedCounter(namespace string, policy SlowPolicy) prometheus.Counter {
	if m == nil {
		return nil
	}
	switch policy {
	case SlowDropOldest:
		return m.dropped.WithLabelValues(namespace, "drop_oldest")
	case SlowConflate:
		return m.dropped.WithLabelValues(namespace, "conflate")
	}
	return nil
}

func (m *Metrics) received() {
	if m != nil {
		m.messagesIn.Inc()
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
			m.brokerReconn.Inc()
		}
	}
}

func (m *Metrics) published(source string, seconds float64, err error) {
	if m != nil {
		result := "ok"
		if err != nil {
			result = "error"
		}
		m.publishes.WithLabelValues(source, result).Inc()
		m.publishLatency.WithLabelValues(source).Observe(seconds)
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
