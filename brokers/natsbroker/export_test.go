package natsbroker

import "time"

// WithTestTimings returns o with a consumer heartbeat and a replay batch
// size that tests can exercise quickly.
func WithTestTimings(o Options, heartbeat time.Duration, replayBatch int) Options {
	o.heartbeat = heartbeat
	o.replayBatch = replayBatch
	return o
}
