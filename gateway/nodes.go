package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// NodesChannel is the reserved broker channel on which nodes announce
// themselves. It lies outside every namespace a browser can be granted by
// the reference configuration (demo.>), so browsers neither see nor forge
// announcements; it passes brokers.CheckName for every broker.
const NodesChannel = "cometgate-nodes"

// Defaults of NodesOptions.
const (
	DefaultAnnounceInterval = 5 * time.Second
	// DefaultAskTimeout bounds the wait for answers to a question on
	// NodesChannel (is node X alive, who owns key K).
	DefaultAskTimeout = time.Second
	// missedAnnouncements is how many announcements in a row a node may
	// miss before it is forgotten (NodesOptions.TTL's default).
	missedAnnouncements = 3
	// maxNodes bounds the node table: the broker is trusted, but a
	// misconfigured fleet must not grow it without end.
	maxNodes = 1024
	// maxAnnouncementBytes bounds a message on NodesChannel.
	maxAnnouncementBytes = 1024
	// maxNodeIDLen bounds a node id taken from an announcement.
	maxNodeIDLen = 64
	// maxOwnerKeyLen bounds the key of an ownership question.
	maxOwnerKeyLen = 256
	// settleQuiet is how long a starting node waits after the last
	// answer to its question "who is there?" before it reports ready,
	// settleMax the longest it waits (the broker may be slow, or down).
	settleQuiet = 250 * time.Millisecond
	settleMax   = 2 * time.Second
	// goneFor is how long a node known to be gone (it said goodbye, or
	// did not answer "are you there?") is answered as gone without
	// asking again.
	goneFor = time.Minute
	// ownerCacheFor is how long an answer "I own K" is remembered after
	// it was last used.
	ownerCacheFor = time.Minute
)

// nodeMsg is a message on NodesChannel. Every message carries its
// sender's id and URL, so every message also announces its sender. Bye
// says the sender is leaving: the others forget it at once instead of
// after TTL. Ask, on a question, asks every node that hears it to act:
//
//	"nodes"  announce yourself now (the asker just started)
//	"node"   Node announces itself now (the asker wonders whether it lives)
//	"owner"  answer whether you own (or are claiming) Key
//
// An answer to an "owner" question carries To (the asker), Q (the
// question's number), Key, Owns and Claiming.
type nodeMsg struct {
	ID       string `json:"id"`
	URL      string `json:"url"`
	Bye      bool   `json:"bye,omitempty"`
	Ask      string `json:"ask,omitempty"`
	Node     string `json:"node,omitempty"`
	Key      string `json:"key,omitempty"`
	Q        uint64 `json:"q,omitempty"`
	To       string `json:"to,omitempty"`
	Owns     bool   `json:"owns,omitempty"`
	Claiming bool   `json:"claiming,omitempty"`
}

// byeTimeout bounds the publish of the goodbye in Close.
const byeTimeout = time.Second

// MaxClockSkew is how far the time a message on NodesChannel was signed
// may be from the receiving node's clock.
const MaxClockSkew = 30 * time.Second

// DefaultPeerNetworks are where gateway nodes are expected to live:
// loopback, the private IPv4 ranges, carrier-grade NAT (some cloud
// networks) and IPv6 unique-local addresses. Link-local addresses (cloud
// metadata services) and public addresses are not among them.
var DefaultPeerNetworks = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fc00::/7"),
}

// signedMsg is a message on a reserved channel (NodesChannel,
// RevokeChannel) signed with the cluster key: Sig is HMAC-SHA256 over the
// channel's name, TS (Unix milliseconds) and Msg.
type signedMsg struct {
	Msg json.RawMessage `json:"msg"`
	TS  int64           `json:"ts"`
	Sig []byte          `json:"sig"`
}

// signMsg returns the signature of msg sent on channel at ts under key.
func signMsg(key []byte, channel string, msg []byte, ts int64) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(channel))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(ts))
	mac.Write(b[:])
	mac.Write(msg)
	return mac.Sum(nil)
}

// sealMsg is what goes on channel for msg: msg itself without a cluster
// key, else msg signed now.
func sealMsg(key []byte, channel string, msg []byte) []byte {
	if key == nil {
		return msg
	}
	ts := time.Now().UnixMilli()
	data, _ := json.Marshal(signedMsg{Msg: msg, TS: ts, Sig: signMsg(key, channel, msg, ts)})
	return data
}

// openMsg returns the message inside data received on channel: checked
// against the cluster key when there is one. reason says why a message
// was refused.
func openMsg(key []byte, channel string, data []byte) (msg []byte, reason string) {
	if key == nil {
		return data, ""
	}
	var s signedMsg
	if err := json.Unmarshal(data, &s); err != nil || len(s.Msg) == 0 || len(s.Sig) == 0 {
		return nil, "unsigned"
	}
	if !hmac.Equal(s.Sig, signMsg(key, channel, s.Msg, s.TS)) {
		return nil, "bad signature"
	}
	if d := time.Since(time.UnixMilli(s.TS)); d > MaxClockSkew || d < -MaxClockSkew {
		return nil, "stale"
	}
	return s.Msg, ""
}

// ErrBrokerDown is what Find and WhoOwns return while the broker is
// down: the nodes cannot be asked, and nothing can be said of a node the
// table does not know (a transport answers "try again", not "gone").
var ErrBrokerDown = errors.New("gateway: nodes: the broker is down, the other nodes cannot be asked")

// NodesOptions configure a node table.
type NodesOptions struct {
	// Broker carries the announcements. Required; the caller keeps
	// ownership and closes it after Nodes.Close.
	Broker brokers.Broker
	// SelfID is this node's id (Config.NodeID). Required; announcements
	// carrying it are ignored.
	SelfID string
	// SelfURL is the base URL other nodes reach this node's HTTP listener
	// at ("http://10.0.0.5:8080"). Required.
	SelfURL string
	// Interval is the time between two announcements of this node;
	// 0 means DefaultAnnounceInterval.
	Interval time.Duration
	// TTL is how long a node stays known after its last announcement
	// while the broker is up; 0 means three intervals. While the broker is
	// down nobody can announce, so nobody is forgotten.
	TTL time.Duration
	// AskTimeout bounds the wait for answers to a question; 0 means
	// DefaultAskTimeout.
	AskTimeout time.Duration
	// ClusterKey, when set, signs every message this node sends on
	// NodesChannel, and messages there without a valid signature, or
	// signed more than MaxClockSkew away from this node's clock, are
	// ignored (and counted): whoever can publish on the broker cannot
	// then steer forwarding, which carries browsers' cookies, to an
	// address of its choosing. At least 32 bytes; every node the same.
	ClusterKey []byte
	// PeerNetworks are where announced nodes may be: an announcement
	// whose URL names an IP address outside them is ignored (and
	// counted). nil means DefaultPeerNetworks. Host names are checked
	// where they are dialled (the transports' forwarder).
	PeerNetworks []netip.Prefix
	// Metrics counts rejected messages; may be nil.
	Metrics *NodesMetrics
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Nodes is the membership of the gateway nodes sharing the broker: node
// id → base URL, learnt from their messages on NodesChannel. It announces
// this node, and answers and asks questions there:
//
//   - A starting node asks everyone to announce themselves, and reports
//     Ready once the answers have settled, so that it knows its peers
//     before a load balancer sends it requests for their sessions.
//   - A node that is not in the table is asked for (Find) before anyone
//     is told its sessions are gone; a node that does not answer a
//     forwarded request is asked whether it lives (Suspect).
//   - While the broker is down nobody is forgotten: requests go to the
//     last known address, and the table is refreshed when the broker
//     comes back.
//   - Keys that name no node (SockJS session ids, which clients choose)
//     are located by asking every node whether it owns them (WhoOwns).
//
// Nodes owns one goroutine (the announcer) and one broker subscription;
// Close stops both. All methods are safe for concurrent use.
type Nodes struct {
	opts NodesOptions
	log  *slog.Logger

	mu      sync.Mutex
	table   map[string]nodeEntry
	gone    map[string]time.Time       // node id → until when it is known gone
	waiters map[string][]chan struct{} // node id → Find/Suspect waiting for its next message
	owners  map[string]ownerEntry      // key → who said it owns it
	asks    map[uint64]*ownerAsk       // open "owner" questions of this node
	askSeq  uint64
	ownerFn func(key string) (owns, claiming bool)
	// lastDown is when the broker was last seen down: for a TTL after
	// it, nobody is forgotten for being silent (the others may not have
	// reconnected to the broker yet).
	lastDown time.Time
	// Readiness: the question "who is there?" went out at start; ready
	// once settleQuiet passed without news, or settleMax since start.
	started, lastNews time.Time
	settled           bool

	sub    brokers.Subscription
	kick   chan struct{} // announce now (a new node appeared); capacity 1
	ctx    context.Context
	cancel context.CancelFunc // Close: stops the announcer and its publish
	wg     sync.WaitGroup
	once   sync.Once
}

type nodeEntry struct {
	url     string
	expires time.Time
}

type ownerEntry struct {
	node    string
	expires time.Time
}

// ownerAsk is an open "owner" question: the nodes expected to answer, and
// what came back.
type ownerAsk struct {
	key       string
	expect    map[string]bool // node ids yet to answer
	owner     string
	claimants []string
	done      chan struct{} // closed when an owner answered or everyone did
	closed    bool
}

// StartNodes subscribes to NodesChannel, asks the nodes there to announce
// themselves, and starts announcing this node at once and then every
// Interval. ctx bounds the subscription only.
func StartNodes(ctx context.Context, opts NodesOptions) (*Nodes, error) {
	if opts.Broker == nil {
		return nil, errors.New("gateway: nodes: a broker is required")
	}
	if err := checkNodeID(opts.SelfID); err != nil {
		return nil, fmt.Errorf("gateway: nodes: SelfID: %w", err)
	}
	if err := CheckNodeURL(opts.SelfURL); err != nil {
		return nil, fmt.Errorf("gateway: nodes: SelfURL: %w", err)
	}
	if opts.Interval < 0 || opts.TTL < 0 || opts.AskTimeout < 0 {
		return nil, errors.New("gateway: nodes: Interval, TTL and AskTimeout must not be negative")
	}
	if opts.Interval == 0 {
		opts.Interval = DefaultAnnounceInterval
	}
	if opts.TTL == 0 {
		opts.TTL = missedAnnouncements * opts.Interval
	}
	if opts.AskTimeout == 0 {
		opts.AskTimeout = DefaultAskTimeout
	}
	if opts.ClusterKey != nil && len(opts.ClusterKey) < 32 {
		return nil, errors.New("gateway: nodes: ClusterKey must be at least 32 bytes")
	}
	if opts.PeerNetworks == nil {
		opts.PeerNetworks = DefaultPeerNetworks
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	now := time.Now()
	n := &Nodes{
		opts:     opts,
		log:      opts.Logger,
		table:    make(map[string]nodeEntry),
		gone:     make(map[string]time.Time),
		waiters:  make(map[string][]chan struct{}),
		owners:   make(map[string]ownerEntry),
		asks:     make(map[uint64]*ownerAsk),
		started:  now,
		lastNews: now,
		kick:     make(chan struct{}, 1),
	}
	sub, err := opts.Broker.Subscribe(ctx, NodesChannel, n.receive)
	if err != nil {
		return nil, fmt.Errorf("gateway: nodes: subscribing to %s: %w", NodesChannel, err)
	}
	n.sub = sub
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.wg.Add(1)
	go n.announce()
	return n, nil
}

// Lookup returns the base URL of node id, if it is in the table: it
// announced itself within TTL, or the broker went down before it could
// announce again. This node's own id is never found.
func (n *Nodes) Lookup(id string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.table[id]
	if !ok || !n.liveLocked(e, time.Now()) {
		return "", false
	}
	return e.url, true
}

// Len is the number of nodes known right now (this one excluded).
func (n *Nodes) Len() int {
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, e := range n.table {
		if n.liveLocked(e, now) {
			c++
		}
	}
	return c
}

// liveLocked reports whether entry e still counts at now: it announced
// itself within TTL, or the broker is down, or was within TTL (nobody
// could announce meanwhile). n.mu must be held.
func (n *Nodes) liveLocked(e nodeEntry, now time.Time) bool {
	if !n.brokerUp() {
		n.lastDown = now
		return true
	}
	return !now.After(e.expires) || now.Before(n.lastDown.Add(n.opts.TTL))
}

// Ready reports whether this node has heard from the nodes that were
// there when it started (see Nodes): until then a load balancer should
// not send it requests that may belong to them.
func (n *Nodes) Ready() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.settled {
		now := time.Now()
		n.settled = now.Sub(n.lastNews) >= settleQuiet || now.Sub(n.started) >= settleMax
	}
	return n.settled
}

func (n *Nodes) brokerUp() bool { return n.opts.Broker.Ready() }

// Find returns the base URL of node id, asking the nodes for it when the
// table does not know it: it waits (up to AskTimeout, or ctx) for id to
// announce itself. false means id is gone: it said goodbye, or it did not
// answer while the broker was up. ErrBrokerDown means nobody could be
// asked.
func (n *Nodes) Find(ctx context.Context, id string) (string, bool, error) {
	if u, ok := n.Lookup(id); ok {
		return u, true, nil
	}
	return n.ask(ctx, id)
}

// Suspect asks whether node id, which did not answer a request, lives:
// it returns its URL once it announces itself again within AskTimeout.
// Otherwise it is forgotten and known gone, and Suspect returns false.
// ErrBrokerDown means nobody could be asked (the node stays known).
func (n *Nodes) Suspect(ctx context.Context, id string) (string, bool, error) {
	return n.ask(ctx, id)
}

// ask publishes "node id, announce yourself" and waits for its next
// message.
func (n *Nodes) ask(ctx context.Context, id string) (string, bool, error) {
	if id == n.opts.SelfID || checkNodeID(id) != nil {
		return "", false, nil
	}
	n.mu.Lock()
	if until, ok := n.gone[id]; ok && time.Now().Before(until) {
		n.mu.Unlock()
		return "", false, nil
	}
	n.mu.Unlock()
	if !n.brokerUp() {
		return "", false, ErrBrokerDown
	}
	heard := make(chan struct{})
	n.mu.Lock()
	n.waiters[id] = append(n.waiters[id], heard)
	n.mu.Unlock()
	defer n.dropWaiter(id, heard)
	ctx, cancel := context.WithTimeout(ctx, n.opts.AskTimeout)
	defer cancel()
	if err := n.publish(ctx, nodeMsg{Ask: "node", Node: id}); err != nil {
		return "", false, ErrBrokerDown
	}
	select {
	case <-heard:
		u, ok := n.Lookup(id)
		return u, ok, nil
	case <-ctx.Done():
	}
	if !n.brokerUp() {
		return "", false, ErrBrokerDown
	}
	now := time.Now()
	n.mu.Lock()
	e, known := n.table[id]
	if known && now.Before(n.lastDown.Add(n.opts.TTL)) {
		// The broker was down lately: the node may not be back on it
		// yet. Its last address stands until it has had the time.
		n.mu.Unlock()
		return e.url, true, nil
	}
	delete(n.table, id)
	n.gone[id] = now.Add(goneFor)
	n.mu.Unlock()
	if known {
		n.log.Info("node forgotten: it did not answer", slog.String("node", id), slog.String("url", e.url))
	}
	return "", false, nil
}

func (n *Nodes) dropWaiter(id string, c chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ws := n.waiters[id]
	for i, w := range ws {
		if w == c {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(n.waiters, id)
	} else {
		n.waiters[id] = ws
	}
}

// SetOwnerFunc installs how this node answers "owner" questions: owns
// reports that the key is this node's (a SockJS session it holds),
// claiming that it is about to open it. Keys are the caller's, opaque to
// Nodes. Without one, this node owns nothing.
func (n *Nodes) SetOwnerFunc(f func(key string) (owns, claiming bool)) {
	n.mu.Lock()
	n.ownerFn = f
	n.mu.Unlock()
}

// WhoOwns asks every node whether it owns key, and returns the owner's id
// and URL, or "" when no node does. When none does, claimant is the
// lowest node id (lower than this node's) that is claiming key itself:
// two nodes asked at once for the same new key, and that one opens it. It
// waits for every known node to answer (or AskTimeout, or ctx), or for the
// first owner; an owner learnt from another node's question in the last
// minute is returned at once. ErrBrokerDown means nobody could be asked.
func (n *Nodes) WhoOwns(ctx context.Context, key string) (owner, ownerURL, claimant string, err error) {
	// A node that has just started (a balancer without health checks
	// sends it requests as soon as it listens) may not have heard of the
	// others yet, and nobody to ask is no answer: it would open a second
	// session under an id another node has. Wait until the table settled
	// (see Ready; bounded by settleMax).
	for !n.Ready() {
		t := time.NewTimer(settleQuiet / 4)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return "", "", "", ctx.Err()
		}
	}
	up := n.brokerUp()
	now := time.Now()
	n.mu.Lock()
	if o, ok := n.owners[key]; ok && now.Before(o.expires) {
		if e, known := n.table[o.node]; known {
			// Remembered for as long as it is used: a session's requests
			// keep coming through this node, and a question asked when the
			// cached answer ran out, at a moment the owner could not hear
			// it (a broker server lost, its clients reconnecting), found
			// nobody, and this node opened a second session under the id.
			n.owners[key] = ownerEntry{node: o.node, expires: now.Add(ownerCacheFor)}
			n.mu.Unlock()
			return o.node, e.url, "", nil
		}
	}
	a := &ownerAsk{key: key, expect: make(map[string]bool), done: make(chan struct{})}
	for id, e := range n.table {
		if n.liveLocked(e, now) {
			a.expect[id] = true
		}
	}
	if len(a.expect) == 0 {
		n.mu.Unlock()
		return "", "", "", nil // nobody else to ask
	}
	n.askSeq++
	q := n.askSeq
	n.asks[q] = a
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.asks, q)
		n.mu.Unlock()
	}()
	if !up {
		return "", "", "", ErrBrokerDown
	}
	ctx, cancel := context.WithTimeout(ctx, n.opts.AskTimeout)
	defer cancel()
	if err := n.publish(ctx, nodeMsg{Ask: "owner", Key: key, Q: q}); err != nil {
		return "", "", "", ErrBrokerDown
	}
	select {
	case <-a.done:
	case <-ctx.Done():
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if a.owner != "" {
		if e, ok := n.table[a.owner]; ok {
			return a.owner, e.url, "", nil
		}
	}
	for _, c := range a.claimants {
		if _, known := n.table[c]; known && c < n.opts.SelfID && (claimant == "" || c < claimant) {
			claimant = c
		}
	}
	return "", "", claimant, nil
}

// Close stops announcing, says goodbye (so the other nodes forget this
// one now: requests for its sessions then get "session not found" and the
// clients open new sessions, instead of being forwarded to an address
// that no longer answers), and unsubscribes, waiting for the announcer.
// Call it after the node drained its sessions, and before its HTTP
// listener closes. It is idempotent. The table keeps answering Lookup
// from what it knew.
func (n *Nodes) Close() error {
	var err error
	n.once.Do(func() {
		n.cancel()
		n.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), byeTimeout)
		if perr := n.publish(ctx, nodeMsg{Bye: true}); perr != nil {
			// The others forget this node after TTL anyway.
			n.log.Debug("saying goodbye to the other nodes failed", slog.Any("err", perr))
		}
		cancel()
		err = n.sub.Unsubscribe()
	})
	return err
}

// publish sends m from this node, signed when there is a cluster key.
func (n *Nodes) publish(ctx context.Context, m nodeMsg) error {
	m.ID, m.URL = n.opts.SelfID, n.opts.SelfURL
	data, _ := json.Marshal(m)
	return n.opts.Broker.Publish(ctx, brokers.Message{Channel: NodesChannel, Data: sealMsg(n.opts.ClusterKey, NodesChannel, data)})
}

// reject counts and logs a message that was not taken.
func (n *Nodes) reject(reason string, attrs ...any) {
	n.opts.Metrics.nodeMessageRejected(reason)
	n.log.Warn("ignoring a message on "+NodesChannel+": "+reason, attrs...)
}

// peerURL reports whether an announced URL may be a node's: a host name
// (checked where it is dialled), or an IP address in PeerNetworks.
func (n *Nodes) peerURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return true
	}
	ip = ip.Unmap()
	for _, p := range n.opts.PeerNetworks {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// receive is the subscription's Handler: it parses, updates the table and
// the open questions, and hands what must be answered to the announcer,
// so it never blocks the broker.
func (n *Nodes) receive(m brokers.Message) {
	if len(m.Data) > maxAnnouncementBytes {
		n.reject("oversized", slog.Int("bytes", len(m.Data)))
		return
	}
	data, reason := openMsg(n.opts.ClusterKey, NodesChannel, m.Data)
	if reason != "" {
		n.reject(reason)
		return
	}
	var a nodeMsg
	if err := json.Unmarshal(data, &a); err != nil {
		n.reject("malformed", slog.Any("err", err))
		return
	}
	if err := checkNodeID(a.ID); err != nil {
		n.reject("malformed", slog.Any("err", err))
		return
	}
	if a.ID == n.opts.SelfID {
		if a.URL != n.opts.SelfURL {
			n.log.Warn("another node announces this node's id: node ids must be unique",
				slog.String("node", a.ID), slog.String("url", a.URL))
		}
		return
	}
	if err := CheckNodeURL(a.URL); err != nil {
		n.reject("malformed", slog.String("node", a.ID), slog.Any("err", err))
		return
	}
	if !n.peerURL(a.URL) {
		n.reject("address not in the peer networks", slog.String("node", a.ID), slog.String("url", a.URL))
		return
	}
	if len(a.Key) > maxOwnerKeyLen {
		n.reject("oversized", slog.String("node", a.ID))
		return
	}
	if a.Bye {
		n.forgetBye(a)
		return
	}
	n.heard(a)
	switch {
	case a.Ask == "nodes", a.Ask == "node" && a.Node == n.opts.SelfID:
		n.kickAnnouncer()
	case a.Ask == "owner":
		n.answerOwner(a)
	case a.To == n.opts.SelfID && a.Q != 0:
		n.ownerAnswered(a)
	}
	if a.Owns && a.Key != "" {
		n.mu.Lock()
		n.owners[a.Key] = ownerEntry{node: a.ID, expires: time.Now().Add(ownerCacheFor)}
		n.mu.Unlock()
	}
}

// forgetBye removes a node that said goodbye; only the instance at that
// URL: a node restarted under the same id elsewhere is not forgotten by
// its predecessor's goodbye.
func (n *Nodes) forgetBye(a nodeMsg) {
	n.mu.Lock()
	e, known := n.table[a.ID]
	left := known && e.url == a.URL
	if left {
		delete(n.table, a.ID)
		n.gone[a.ID] = time.Now().Add(goneFor)
		for k, o := range n.owners {
			if o.node == a.ID {
				delete(n.owners, k)
			}
		}
		n.answeredLocked(a.ID)
	}
	n.mu.Unlock()
	if left {
		n.log.Info("node left", slog.String("node", a.ID), slog.String("url", a.URL))
	}
}

// heard records a message from node a.ID: it is alive at a.URL.
func (n *Nodes) heard(a nodeMsg) {
	now := time.Now()
	n.mu.Lock()
	old, known := n.table[a.ID]
	fresh := !known || !n.liveLocked(old, now)
	if !known && len(n.table) >= maxNodes {
		n.pruneLocked(now)
		if len(n.table) >= maxNodes {
			n.mu.Unlock()
			n.log.Warn("node table full: ignoring a node", slog.String("node", a.ID), slog.Int("max", maxNodes))
			return
		}
	}
	n.table[a.ID] = nodeEntry{url: a.URL, expires: now.Add(n.opts.TTL)}
	delete(n.gone, a.ID)
	for _, w := range n.waiters[a.ID] {
		close(w)
	}
	delete(n.waiters, a.ID)
	if fresh || old.url != a.URL {
		n.lastNews = now
	}
	n.mu.Unlock()
	if fresh || old.url != a.URL {
		n.log.Info("node discovered", slog.String("node", a.ID), slog.String("url", a.URL))
		// A node that just (re)started knows nobody: answer it now rather
		// than at the next tick, so forwarding to this node works sooner.
		n.kickAnnouncer()
	}
}

func (n *Nodes) kickAnnouncer() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// answerOwner answers an "owner" question, on a goroutine of the
// announcer's group (publishing may wait for the broker).
func (n *Nodes) answerOwner(a nodeMsg) {
	n.mu.Lock()
	f := n.ownerFn
	n.mu.Unlock()
	var owns, claiming bool
	if f != nil {
		owns, claiming = f(a.Key)
	}
	n.publishLater(nodeMsg{To: a.ID, Q: a.Q, Key: a.Key, Owns: owns, Claiming: claiming}, "answering an owner question")
}

// publishLater publishes m on a goroutine of the announcer's group
// (publishing may wait for the broker), bounded by AskTimeout; nothing
// once Close began. what names it in the debug log of a failure.
func (n *Nodes) publishLater(m nodeMsg, what string) {
	if n.ctx.Err() != nil {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, n.opts.AskTimeout)
		defer cancel()
		if err := n.publish(ctx, m); err != nil && n.ctx.Err() == nil {
			n.log.Debug(what+" failed", slog.Any("err", err))
		}
	}()
}

// Owned tells every node, in the background, that this node now owns key
// (it opened the SockJS session it names), so that they forward its
// requests at once, without asking, for ownerCacheFor; above all while
// the broker is down, when nobody can be asked and a node that knows no
// owner would open a second session under the id. It does nothing once
// Close began; a failed publish only costs the others a question later.
func (n *Nodes) Owned(key string) {
	n.publishLater(nodeMsg{Key: key, Owns: true}, "telling the other nodes about an owned key")
}

// ownerAnswered records an answer to one of this node's questions.
func (n *Nodes) ownerAnswered(a nodeMsg) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ask := n.asks[a.Q]
	if ask == nil || ask.key != a.Key {
		return
	}
	if a.Claiming {
		ask.claimants = append(ask.claimants, a.ID)
	}
	if a.Owns && ask.owner == "" {
		ask.owner = a.ID
	}
	// This question only: an answer to another one says nothing about
	// this key, and counting it here closed questions before their owner
	// answered (another node then opened a second session under the id).
	delete(ask.expect, a.ID)
	ask.closeIfCompleteLocked()
}

// answeredLocked marks node id as never going to answer any open question
// (it left, or is gone), and closes the questions that are complete.
func (n *Nodes) answeredLocked(id string) {
	for _, ask := range n.asks {
		delete(ask.expect, id)
		ask.closeIfCompleteLocked()
	}
}

// closeIfCompleteLocked closes a question that is complete: an owner
// answered, or nobody is left to. Nodes.mu must be held.
func (a *ownerAsk) closeIfCompleteLocked() {
	if !a.closed && (a.owner != "" || len(a.expect) == 0) {
		a.closed = true
		close(a.done)
	}
}

// announce publishes this node's announcement: first a question asking
// everyone to announce themselves, then at every tick and whenever asked
// or a new node appears. It forgets nodes whose announcements stopped
// while the broker was up, and after the broker was down it gives every
// node a new TTL and asks again.
func (n *Nodes) announce() {
	defer n.wg.Done()
	t := time.NewTicker(n.opts.Interval)
	defer t.Stop()
	msg := nodeMsg{Ask: "nodes"}
	wasDown := false
	for {
		// Publish may wait for the broker (down, reconnecting): bounded by
		// the interval, and cut short by Close.
		ctx, cancel := context.WithTimeout(n.ctx, n.opts.Interval)
		err := n.publish(ctx, msg)
		cancel()
		if err != nil && n.ctx.Err() == nil && !errors.Is(err, brokers.ErrClosed) {
			n.log.Warn("announcing this node failed", slog.Any("err", err))
		}
		msg = nodeMsg{}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.kick:
		}
		up := n.brokerUp()
		now := time.Now()
		n.mu.Lock()
		switch {
		case !up:
			wasDown = true
			n.lastDown = now
		case wasDown:
			// Nobody could announce while the broker was down: ask them
			// to say they are still there (liveLocked gives them a TTL
			// from the outage's end to do so).
			wasDown = false
			msg = nodeMsg{Ask: "nodes"}
		default:
			n.pruneLocked(now)
		}
		n.mu.Unlock()
	}
}

func (n *Nodes) pruneLocked(now time.Time) {
	for id, e := range n.table {
		if !n.liveLocked(e, now) {
			delete(n.table, id)
			n.answeredLocked(id)
			n.log.Info("node forgotten: no announcement", slog.String("node", id), slog.String("url", e.url))
		}
	}
	for id, until := range n.gone {
		if now.After(until) {
			delete(n.gone, id)
		}
	}
	for k, o := range n.owners {
		if now.After(o.expires) {
			delete(n.owners, k)
		}
	}
}

// checkNodeID accepts what can be the first token of a session id: 1 to 64
// bytes of letters, digits, "_" and "-".
func checkNodeID(id string) error {
	if id == "" || len(id) > maxNodeIDLen {
		return fmt.Errorf("node id must be 1 to %d bytes, got %d", maxNodeIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("node id %q: character %q not allowed", id, rune(c))
		}
	}
	return nil
}

// CheckNodeURL accepts a node's base URL: http or https, a host, an
// optional port, and nothing else (no user info, path, query or fragment).
func CheckNodeURL(s string) error {
	const rule = "must be http(s)://host[:port] with nothing after the host"
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" ||
		strings.HasSuffix(u.Host, ":") || u.Hostname() == "" {
		return fmt.Errorf("node URL %s, got %q", rule, s)
	}
	return nil
}
