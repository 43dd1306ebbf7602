package transports

import (
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// The admission gate's limits on new sessions: concurrent sessions per
// client address, new sessions per second per address, and new sessions
// per second on the node (a reconnect storm after another node went
// away). Addresses count by ipKey: an IPv4 address, an IPv6 /64. One lock
// guards them all; it is taken once per session opened and once per
// session ended, never per frame.

// admissionLimits holds the counts and buckets of one gate.
type admissionLimits struct {
	max      int          // sessions on the node; 0: unlimited
	maxPerIP int          // 0: unlimited
	ipRate   gateway.Rate // new sessions per address
	nodeRate gateway.Rate // new sessions on the node
	clock    gateway.Clock
	metrics  *gateway.Metrics

	mu       sync.Mutex
	sessions int                     // admitted and not released (only while max is set)
	perIP    map[netip.Addr]*ipEntry // by ipKey; only while maxPerIP or ipRate limit
	node     gateway.Bucket
	swept    int64 // clock reading of the last sweep
}

// ipEntry is what the gate knows of one address: its open sessions and
// the bucket its new sessions take from. An entry with no session and a
// full bucket is the same as none, and is forgotten.
type ipEntry struct {
	sessions int
	opens    gateway.Bucket
}

// sweepEvery is how often entries of addresses that hold no session are
// looked at for forgetting: the map holds the addresses with sessions and
// those that opened one within about a bucket's refill time (Burst /
// PerSecond) plus this.
const sweepEvery = 10 * time.Second

func newAdmissionLimits(opts Options) *admissionLimits {
	l := &admissionLimits{
		max:      opts.MaxSessions,
		maxPerIP: opts.MaxSessionsPerIP,
		ipRate:   opts.NewSessionsPerIP,
		nodeRate: opts.NewSessionsPerNode,
		clock:    opts.Gateway.Config().Clock,
		metrics:  opts.Gateway.Config().Metrics,
		perIP:    make(map[netip.Addr]*ipEntry),
	}
	return l
}

// tracksIPs reports whether addresses are counted at all.
func (l *admissionLimits) tracksIPs() bool { return l.maxPerIP > 0 || !l.ipRate.Unlimited() }

// refusedFull refuses a session on a node that holds Options.MaxSessions:
// the client should try again, on this node or another, spread over a
// few seconds.
var refusedFull = &refusal{status: http.StatusServiceUnavailable, code: gateway.DisconnectNodeFull.Code,
	msg: gateway.DisconnectNodeFull.Reason, retry: true, wait: time.Second, spread: 4 * time.Second}

// acquire admits one new session from ip (an ipKey), or says why not.
// A full node refuses before any bucket is touched; then the address's
// own limits come first, so that an address over its rate takes nothing
// from the node's: one client cannot spend the node's budget on its own
// refusals. An admitted session must be released.
func (l *admissionLimits) acquire(ip netip.Addr) *refusal {
	if l.max <= 0 && !l.tracksIPs() && l.nodeRate.Unlimited() {
		return nil
	}
	now := l.clock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.sessions >= l.max {
		l.metrics.Refused(gateway.RefusedGlobalLimit)
		return refusedFull
	}
	var e *ipEntry
	if l.tracksIPs() {
		l.sweepLocked(now)
		e = l.perIP[ip]
		if e == nil {
			e = &ipEntry{}
		}
		if l.maxPerIP > 0 && e.sessions >= l.maxPerIP {
			l.metrics.Refused(gateway.RefusedIPLimit)
			return refusedTooMany
		}
		if !e.opens.Take(l.ipRate, now) {
			l.metrics.Refused(gateway.RefusedIPRate)
			return rateRefusal(http.StatusTooManyRequests, gateway.DisconnectSessionRate, e.opens.Wait(l.ipRate, now), l.ipRate)
		}
	}
	if !l.node.Take(l.nodeRate, now) {
		if e != nil {
			e.opens.Put(l.ipRate)
			l.forgetLocked(ip, e, now)
		}
		l.metrics.Refused(gateway.RefusedNodeRate)
		return rateRefusal(http.StatusServiceUnavailable, gateway.DisconnectNodeBusy, l.node.Wait(l.nodeRate, now), l.nodeRate)
	}
	if e != nil {
		e.sessions++
		l.perIP[ip] = e
	}
	if l.max > 0 {
		l.sessions++
	}
	return nil
}

// release ends one session of ip that acquire admitted.
func (l *admissionLimits) release(ip netip.Addr) {
	if l.max <= 0 && !l.tracksIPs() {
		return
	}
	now := l.clock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 {
		l.sessions--
	}
	if !l.tracksIPs() {
		return
	}
	if e := l.perIP[ip]; e != nil {
		e.sessions--
		l.forgetLocked(ip, e, now)
	}
}

// forgetLocked drops e when it is the same as no entry.
func (l *admissionLimits) forgetLocked(ip netip.Addr, e *ipEntry, now int64) {
	if e.sessions <= 0 && e.opens.Full(l.ipRate, now) {
		delete(l.perIP, ip)
	}
}

// sweepLocked forgets, every sweepEvery, the entries of addresses without
// sessions whose bucket refilled: what bounds the map when many addresses
// each open a session and close it again.
func (l *admissionLimits) sweepLocked(now int64) {
	if now-l.swept < int64(sweepEvery) {
		return
	}
	l.swept = now
	for ip, e := range l.perIP {
		l.forgetLocked(ip, e, now)
	}
}

// addresses is the number of addresses the limits remember (tests).
func (l *admissionLimits) addresses() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.perIP)
}

// rateRefusal is the refusal of a rate limit on new sessions: the client
// should come back once the bucket has a token (wait), plus a jitter
// spread over the time the bucket takes to refill its burst (at least a
// second), so that the clients refused in one burst do not all return
// in the next one.
func rateRefusal(status int, d gateway.Disconnect, wait time.Duration, r gateway.Rate) *refusal {
	ref := refuse(status, d)
	ref.wait = wait
	ref.spread = max(time.Second, time.Duration(float64(r.Burst)/r.PerSecond*float64(time.Second)))
	return ref
}

// retryHint draws the delay this answer advises before the client tries
// again: the refusal's wait (at least a second) plus a jitter up to its
// spread. It sets Retry-After (whole seconds, rounded up) on h; 0, and no
// header, when the refusal does not ask the client to retry.
func (ref *refusal) retryHint(h http.Header) time.Duration {
	if !ref.retry {
		return 0
	}
	d := max(ref.wait, time.Second)
	if ref.spread > 0 {
		d += rand.N(ref.spread)
	}
	h.Set("Retry-After", strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10))
	return d
}

// sjsReason is the refusal's message for a SockJS close frame, which has
// room for nothing but a code and a reason: the retry advice goes in the
// reason.
func (ref *refusal) sjsReason(h http.Header) string {
	if d := ref.retryHint(h); d > 0 && ref.spread > 0 {
		return ref.msg + " (retry in " + strconv.FormatInt(d.Milliseconds(), 10) + " ms)"
	}
	return ref.msg
}
