package brokertest

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// Inbox is a brokers.Handler for tests that records every message it
// receives: pass its Handle to Subscribe or Replay. It also notes whether
// the broker ever called it concurrently (CheckSerial). The zero value is
// ready; its methods are safe for concurrent use.
type Inbox struct {
	mu       sync.Mutex
	msgs     []brokers.Message
	inflight atomic.Int32
	overlap  atomic.Bool
	// stalled and release are Stall's: the next call closes stalled and
	// waits for release. Guarded by mu; nil when no stall is asked.
	stalled, release chan struct{}
}

// Handle records m; it is a brokers.Handler.
func (in *Inbox) Handle(m brokers.Message) {
	if in.inflight.Add(1) > 1 {
		in.overlap.Store(true)
	}
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	stalled, release := in.stalled, in.release
	in.stalled = nil
	in.mu.Unlock()
	if stalled != nil {
		close(stalled)
		<-release
	}
	in.inflight.Add(-1)
}

// Stall makes the next call of Handle wait, after it recorded its
// message, until Release: what follows piles up behind it in the
// broker's buffers, as behind a node that fell behind. The channel it
// returns is closed once that call waits.
func (in *Inbox) Stall() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.stalled, in.release = make(chan struct{}), make(chan struct{})
	return in.stalled
}

// Release ends the wait Stall asked for; later calls do nothing (a test
// may defer one, so that a failure does not leave the Handler waiting).
func (in *Inbox) Release() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.release != nil {
		close(in.release)
		in.release = nil
	}
}

// Messages returns a copy of the messages received, oldest first.
func (in *Inbox) Messages() []brokers.Message {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.msgs)
}

// Count returns how many messages arrived.
func (in *Inbox) Count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.msgs)
}

// Has reports whether a message with the given channel and data arrived.
func (in *Inbox) Has(channel, data string) bool {
	_, ok := in.find(channel, data)
	return ok
}

func (in *Inbox) find(channel, data string) (brokers.Message, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	i := slices.IndexFunc(in.msgs, func(m brokers.Message) bool {
		return m.Channel == channel && string(m.Data) == data
	})
	if i < 0 {
		return brokers.Message{}, false
	}
	return in.msgs[i], true
}

// Wait waits until a message with the given channel and data arrived and
// returns the first one.
func (in *Inbox) Wait(t testing.TB, channel, data string) brokers.Message {
	t.Helper()
	var got brokers.Message
	WaitUntil(t, fmt.Sprintf("%q on %q", data, channel), func() bool {
		var ok bool
		got, ok = in.find(channel, data)
		return ok
	})
	return got
}

// WaitN waits until at least n messages arrived.
func (in *Inbox) WaitN(t testing.TB, n int) {
	t.Helper()
	WaitUntil(t, fmt.Sprintf("%d messages", n), func() bool { return in.Count() >= n })
}

// CheckSerial fails t if the broker ever called Handle concurrently, which
// the contract forbids for one Subscription.
func (in *Inbox) CheckSerial(t testing.TB) {
	t.Helper()
	if in.overlap.Load() {
		t.Error("Handler was called concurrently for one subscription")
	}
}

// WaitUntil polls cond until it holds, and fails t if it does not within
// 15 s (a loaded CI machine may be that slow; a passing test never waits
// that long).
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(delay)
	}
}
