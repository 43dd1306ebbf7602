package natsbroker

import (
	"context"
	"fmt"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// WithTestTimings returns o with a consumer heartbeat and a replay batch
// size that tests can exercise quickly.
func WithTestTimings(o Options, heartbeat time.Duration, replayBatch int) Options {
	o.heartbeat = heartbeat
	o.replayBatch = replayBatch
	return o
}

// WithAnswerWait returns o with the wait for an answer to a consumer's
// creation or deletion set to d.
func WithAnswerWait(o Options, d time.Duration) Options {
	o.answerWait = d
	return o
}

// WithInterestSettle returns o with the window after a reconnect in
// which a plain subscription's deliveries earn it a second Gap marker set
// to d.
func WithInterestSettle(o Options, d time.Duration) Options {
	o.settle = d
	return o
}

// NewBroker opens another in-process Broker (opts.URLs is ignored). The
// caller may Close it; Embedded.Close closes it anyway, before the server
// stops.
func (e *Embedded) NewBroker(ctx context.Context, opts Options) (*Broker, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, fmt.Errorf("natsbroker: embedded server: %w", brokers.ErrClosed)
	}
	b, err := e.connect(ctx, opts)
	if err != nil {
		return nil, err
	}
	e.extra = append(e.extra, b)
	return b, nil
}

// StoreDir returns the JetStream store directory.
func (e *Embedded) StoreDir() string { return e.storeDir }
