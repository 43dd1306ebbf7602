package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	// missedAnnouncements is how many announcements in a row a node may
	// miss before it is forgotten (NodesOptions.TTL's default).
	missedAnnouncements = 3
)

// Bounds on announcements and on the table they fill.
const (
	// maxNodes bounds the node table: the broker is trusted, but a
	// misconfigured fleet must not grow it without end.
	maxNodes = 1024
	// maxAnnouncementBytes bounds an announcement message.
	maxAnnouncementBytes = 1024
	// maxNodeIDLen bounds a node id taken from an announcement.
	maxNodeIDLen = 64
)

// announcement is the body of a message on NodesChannel. Bye says the
// node is leaving: the others forget it at once instead of after TTL.
type announcement struct {
	ID  string `json:"id"`
	URL string `json:"url"`
	Bye bool   `json:"bye,omitempty"`
}

// byeTimeout bounds the publish of the goodbye in Close.
const byeTimeout = time.Second

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
	// TTL is how long a node stays known after its last announcement;
	// 0 means three intervals.
	TTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Nodes is the table of the other gateway nodes sharing the broker: node
// id → base URL, learnt from their announcements on NodesChannel, each
// entry forgotten when its node stops announcing for TTL. It also
// announces this node. Nodes owns one goroutine (the announcer) and one
// broker subscription; Close stops both. All methods are safe for
// concurrent use.
type Nodes struct {
	opts NodesOptions
	log  *slog.Logger
	self []byte // this node's announcement, encoded once

	mu    sync.Mutex
	table map[string]nodeEntry

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

// StartNodes subscribes to NodesChannel and starts announcing this node at
// once and then every Interval. ctx bounds the subscription only.
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
	if opts.Interval < 0 || opts.TTL < 0 {
		return nil, errors.New("gateway: nodes: Interval and TTL must not be negative")
	}
	if opts.Interval == 0 {
		opts.Interval = DefaultAnnounceInterval
	}
	if opts.TTL == 0 {
		opts.TTL = missedAnnouncements * opts.Interval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	self, _ := json.Marshal(announcement{ID: opts.SelfID, URL: opts.SelfURL})
	n := &Nodes{
		opts:  opts,
		log:   opts.Logger,
		self:  self,
		table: make(map[string]nodeEntry),
		kick:  make(chan struct{}, 1),
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

// Lookup returns the base URL of node id, if that node announced itself
// within TTL. This node's own id is never found.
func (n *Nodes) Lookup(id string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.table[id]
	if !ok || time.Now().After(e.expires) {
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
		if !now.After(e.expires) {
			c++
		}
	}
	return c
}

// Close stops announcing, says goodbye (so the other nodes forget this
// one now: requests for its sessions then get "session not found" and the
// clients open new sessions, instead of 502 until the entry expires), and
// unsubscribes, waiting for the announcer. Call it after the node drained
// its sessions. It is idempotent. The table keeps answering Lookup from
// what it knew.
func (n *Nodes) Close() error {
	var err error
	n.once.Do(func() {
		n.cancel()
		n.wg.Wait()
		bye, _ := json.Marshal(announcement{ID: n.opts.SelfID, URL: n.opts.SelfURL, Bye: true})
		ctx, cancel := context.WithTimeout(context.Background(), byeTimeout)
		if perr := n.opts.Broker.Publish(ctx, brokers.Message{Channel: NodesChannel, Data: bye}); perr != nil {
			// The others forget this node after TTL anyway.
			n.log.Debug("saying goodbye to the other nodes failed", slog.Any("err", perr))
		}
		cancel()
		err = n.sub.Unsubscribe()
	})
	return err
}

// receive is the subscription's Handler: it only parses and updates the
// table, so it never blocks the broker.
func (n *Nodes) receive(m brokers.Message) {
	if len(m.Data) > maxAnnouncementBytes {
		n.log.Warn("ignoring an oversized node announcement", slog.Int("bytes", len(m.Data)))
		return
	}
	var a announcement
	if err := json.Unmarshal(m.Data, &a); err != nil {
		n.log.Warn("ignoring a malformed node announcement", slog.Any("err", err))
		return
	}
	if err := checkNodeID(a.ID); err != nil {
		n.log.Warn("ignoring a node announcement", slog.Any("err", err))
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
		n.log.Warn("ignoring a node announcement", slog.String("node", a.ID), slog.Any("err", err))
		return
	}
	if a.Bye {
		n.mu.Lock()
		// Only the instance at that URL: a node restarted under the same
		// id elsewhere is not forgotten by its predecessor's goodbye.
		e, known := n.table[a.ID]
		if known && e.url == a.URL {
			delete(n.table, a.ID)
		}
		n.mu.Unlock()
		if known && e.url == a.URL {
			n.log.Info("node left", slog.String("node", a.ID), slog.String("url", a.URL))
		}
		return
	}
	now := time.Now()
	n.mu.Lock()
	old, known := n.table[a.ID]
	fresh := !known || now.After(old.expires)
	if !known && len(n.table) >= maxNodes {
		n.pruneLocked(now)
		if len(n.table) >= maxNodes {
			n.mu.Unlock()
			n.log.Warn("node table full: ignoring a node", slog.String("node", a.ID), slog.Int("max", maxNodes))
			return
		}
	}
	n.table[a.ID] = nodeEntry{url: a.URL, expires: now.Add(n.opts.TTL)}
	n.mu.Unlock()
	if fresh || old.url != a.URL {
		n.log.Info("node discovered", slog.String("node", a.ID), slog.String("url", a.URL))
		// A node that just (re)started knows nobody: answer it now rather
		// than at the next tick, so forwarding to this node works sooner.
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}

// announce publishes this node's announcement at once, on every tick and
// when a new node appears, and forgets nodes whose announcements stopped.
func (n *Nodes) announce() {
	defer n.wg.Done()
	t := time.NewTicker(n.opts.Interval)
	defer t.Stop()
	for {
		// Publish may wait for the broker (down, reconnecting): bounded by
		// the interval, and cut short by Close.
		ctx, cancel := context.WithTimeout(n.ctx, n.opts.Interval)
		err := n.opts.Broker.Publish(ctx, brokers.Message{Channel: NodesChannel, Data: n.self})
		cancel()
		if err != nil && n.ctx.Err() == nil && !errors.Is(err, brokers.ErrClosed) {
			n.log.Warn("announcing this node failed", slog.Any("err", err))
		}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.kick:
		}
		n.mu.Lock()
		n.pruneLocked(time.Now())
		n.mu.Unlock()
	}
}

func (n *Nodes) pruneLocked(now time.Time) {
	for id, e := range n.table {
		if now.After(e.expires) {
			delete(n.table, id)
			n.log.Info("node forgotten: no announcement", slog.String("node", id), slog.String("url", e.url))
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
