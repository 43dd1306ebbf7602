package gateway

import "github.com/prometheus/client_golang/prometheus"

// NodesMetrics counts what the node table refuses on NodesChannel. A nil
// *NodesMetrics records nothing.
type NodesMetrics struct {
	rejected *prometheus.CounterVec
}

// NewNodesMetrics creates the collectors and registers them with reg.
func NewNodesMetrics(reg prometheus.Registerer) *NodesMetrics {
	m := &NodesMetrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cometgate_node_messages_rejected_total",
			Help: "Messages on the nodes' channel that were ignored, by reason (unsigned, bad signature, stale, malformed, oversized, address not in the peer networks).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.rejected)
	return m
}

func (m *NodesMetrics) nodeMessageRejected(reason string) {
	if m == nil {
		return
	}
	m.rejected.WithLabelValues(reason).Inc()
}
