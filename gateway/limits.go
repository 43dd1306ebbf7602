package gateway

import (
	"math"
	"sync/atomic"
	"time"
)

// Rate limits: one token bucket type for everything a client may do too
// often. A session holds two (frames and publishes, guarded by its own
// lock); the admission gate in package transports holds one per client
// address and one for the node. A bucket is 16 bytes and takes no lock
// and allocates nothing of its own: its owner's lock guards it.

// Rate is a token bucket's refill rate and burst: PerSecond tokens are
// added every second, up to Burst; each event takes one, and an event
// that finds none is over the limit. PerSecond <= 0 means unlimited.
type Rate struct {
	PerSecond float64
	Burst     int
}

// Unlimited reports whether r limits nothing.
func (r Rate) Unlimited() bool { return r.PerSecond <= 0 }

// Bucket is a token bucket in a Rate. The zero Bucket is full. It is not
// safe for concurrent use: its owner's lock guards it. Times are
// nanoseconds on the owner's clock (see Clock), which only moves forward.
type Bucket struct {
	used float64 // tokens taken and not yet refilled at last
	last int64   // clock reading of the last update
}

// Take takes one token at now and reports whether there was one. An
// unlimited rate always has one.
func (b *Bucket) Take(r Rate, now int64) bool {
	if r.Unlimited() {
		return true
	}
	b.refill(r, now)
	if b.used+1 > float64(r.Burst) {
		return false
	}
	b.used++
	return true
}

// Put gives back a token taken by Take (the event it was taken for did
// not happen after all).
func (b *Bucket) Put(r Rate) {
	if !r.Unlimited() {
		b.used = math.Max(0, b.used-1)
	}
}

// refill returns what the time since the last update refilled.
func (b *Bucket) refill(r Rate, now int64) {
	if now > b.last {
		b.used = math.Max(0, b.used-float64(now-b.last)*r.PerSecond/1e9)
	}
	b.last = max(b.last, now)
}

// Wait is how long after now the bucket has a token again (0 when it has
// one now).
func (b *Bucket) Wait(r Rate, now int64) time.Duration {
	if r.Unlimited() {
		return 0
	}
	b.refill(r, now)
	missing := b.used + 1 - float64(r.Burst)
	if missing <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(missing / r.PerSecond * 1e9))
}

// Full reports whether the bucket is full at now: a full bucket is the
// same as a new one, so its owner may forget it.
func (b *Bucket) Full(r Rate, now int64) bool {
	if r.Unlimited() {
		return true
	}
	b.refill(r, now)
	return b.used == 0
}

// Clock reads a monotonic clock in nanoseconds. Rate limits read it at
// every event; tests inject one that they move by hand (Config.Clock).
type Clock func() int64

// SystemClock is the process's monotonic clock.
func SystemClock() Clock {
	start := time.Now()
	return func() int64 { return int64(time.Since(start)) }
}

// ManualClock is a clock that moves only when told to (Advance): with it,
// a test of a rate limit sees exactly the time it means to, however slow
// the machine. The zero ManualClock reads 0. Safe for concurrent use.
type ManualClock struct{ now atomic.Int64 }

// Read is the Clock.
func (c *ManualClock) Read() int64 { return c.now.Load() }

// Advance moves the clock forward by d.
func (c *ManualClock) Advance(d time.Duration) { c.now.Add(int64(d)) }
