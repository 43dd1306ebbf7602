package amqpbroker

// StreamConsumers returns how many live stream consumers the current
// session runs (0 while disconnected), for tests. RabbitMQ 3.10's own
// consumer count of a stream is not reliable: it misses consumers whose
// channel closed.
func StreamConsumers(b *Broker) int {
	b.topo <- struct{}{}
	defer func() { <-b.topo }()
	if b.tsess == nil {
		return 0
	}
	return len(b.tsess.scons)
}
