package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// runOptions are the flags of "cometbench run".
type runOptions struct {
	URLs        []*url.URL
	Transport   string
	Sessions    int
	Channels    int
	Prefix      string
	Rates       []float64
	Duration    time.Duration
	Drain       time.Duration
	Settle      time.Duration
	OpenTimeout time.Duration
	Publish     string
	NATSURL     string
	SubjPrefix  string
	APIKey      string
	APILanes    int
	PIDs        []int
	MetricsURLs []string
	Procs       int
	Ramp        float64
	SrcIPs      []net.IP
	Payload     int
	ReadBuffer  int
	MaxP99      time.Duration
	JSON        bool
	Label       string
	CPUProfile  string
	Poll        bool
	Deflate     bool
	// Floor measures the loopback write floor before the first step (see
	// floor.go): on by default when --pid is given.
	Floor     bool
	FloorTime time.Duration
}

// Bounds that keep every run finite and sane.
const (
	maxSessions       = 200_000
	maxRate           = 2_000_000
	maxDuration       = time.Hour
	maxSrcIPs         = 1024
	maxPayload        = 1 << 20
	sessionsPerWorker = 15_000 // automatic --procs: one process may hold 20,000 files
	fdHeadroom        = 500    // files a worker needs besides its sessions
)

func parseRunFlags(args []string, stderr io.Writer) (*runOptions, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	urls := fs.String("url", "http://127.0.0.1:8080", "gateway base URL; several comma-separated nodes share the sessions round-robin (loopback only)")
	transport := fs.String("transport", "ws", "session transport: "+transportNames())
	sessions := fs.Int("sessions", 100, "sessions to open")
	channels := fs.Int("channels", 1, "channels; session i subscribes to PREFIX.(i % channels)")
	prefix := fs.String("prefix", "demo.bench", "channel name prefix (the default config lets anyone subscribe to demo.>)")
	rates := fs.String("rate", "10", "messages per second over all channels; 0 = idle sessions; a comma-separated list runs one step per rate on the same sessions")
	duration := fs.Duration("duration", 10*time.Second, "publishing time per rate step (idle: how long the sessions are held)")
	drain := fs.Duration("drain", 5*time.Second, "after a step, how long to wait for the last deliveries before counting them lost")
	settle := fs.Duration("settle", 2*time.Second, "wait after the sessions are open before measuring the gateway's memory")
	openTimeout := fs.Duration("open-timeout", 15*time.Second, "longest time for one session to connect and be subscribed")
	publish := fs.String("publish", "api", "publish through the gateway's API (api) or straight into the broker (nats)")
	natsURL := fs.String("nats-url", "nats://127.0.0.1:4223", "broker for --publish nats (the embedded server's listener: COMETGATE_BROKER_EMBEDDED_LISTEN)")
	subjPrefix := fs.String("subject-prefix", "", "the gateway's broker.subject_prefix, for --publish nats")
	apiKey := fs.String("api-key", "", "API key for --publish api (loopback callers need none by default)")
	apiLanes := fs.Int("api-lanes", 8, "concurrent publish API requests (each channel always uses the same one, to keep its order)")
	pids := fs.String("pid", "", "gateway process id(s), comma-separated: measure their CPU and memory from /proc")
	metrics := fs.String("metrics-url", "", "gateway /metrics URL(s), comma-separated (default: each --url + /metrics when --pid is set; \"off\" disables)")
	procs := fs.Int("procs", -1, fmt.Sprintf("child processes holding the sessions (-1 = one per %d sessions; 0 = none, the sessions are read in this process, next to the publisher)", sessionsPerWorker))
	ramp := fs.Float64("ramp", 2000, "sessions opened per second, over all workers")
	srcIPs := fs.String("src-ips", "127.0.0.1", "loopback source addresses for the sessions, a range 127.0.0.1-127.0.0.20 or a comma-separated list (each gives ~28k ports)")
	payload := fs.Int("payload", 64, fmt.Sprintf("message payload size in bytes (at least %d)", minPayload))
	readBuf := fs.Int("read-buffer", 4096, "read buffer per session connection, bytes (with --epoll only until the session is subscribed)")
	maxP99 := fs.Duration("max-p99", 0, "with several rates: stop after the first step whose p99 latency exceeds this (0 = run every step)")
	jsonOut := fs.Bool("json", false, "print one JSON line per run step instead of the table")
	label := fs.String("label", "", "a name for this run, copied into the output")
	poll := fs.Bool("epoll", true, "read subscribed sessions from one epoll loop per worker (false: one goroutine per connection)")
	deflate := fs.Bool("deflate", false, "websocket: offer permessage-deflate, and inflate the compressed messages the gateway sends")
	var floor optionalBool
	fs.Var(&floor, "floor", "measure the loopback write floor (one write(2) of a frame, writer on the gateway's CPUs, reader on this program's) before the first step, and print each step's gateway CPU per delivery as a ratio to it (default: on with --pid)")
	floorTime := fs.Duration("floor-time", 2*time.Second, "longest writing time of the floor measurement")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's own CPU profile (this process only) to this file")
	if err := fs.Parse(args); err != nil {
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("run: unexpected argument %q", fs.Arg(0))
	}
	o := &runOptions{
		Transport: *transport, Sessions: *sessions, Channels: *channels, Prefix: *prefix,
		Duration: *duration, Drain: *drain, Settle: *settle, OpenTimeout: *openTimeout,
		Publish: *publish, NATSURL: *natsURL, SubjPrefix: *subjPrefix, APIKey: *apiKey,
		APILanes: *apiLanes, Procs: *procs, Ramp: *ramp, Payload: *payload,
		ReadBuffer: *readBuf, MaxP99: *maxP99, JSON: *jsonOut, Label: *label, CPUProfile: *cpuProfile, Poll: *poll,
		Deflate: *deflate, FloorTime: *floorTime,
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	for _, raw := range splitList(*urls) {
		u, err := parseGatewayURL(raw)
		if err != nil {
			bad("--url %s", err)
			continue
		}
		o.URLs = append(o.URLs, u)
	}
	if len(o.URLs) == 0 {
		bad("--url: at least one gateway URL is required")
	}
	if _, err := lookupTransport(o.Transport); err != nil {
		errs = append(errs, err)
	}
	if o.Sessions < 1 || o.Sessions > maxSessions {
		bad("--sessions %d: must be 1..%d", o.Sessions, maxSessions)
	}
	if o.Channels < 1 || o.Channels > o.Sessions {
		bad("--channels %d: must be 1..sessions (%d), every channel needs a subscriber", o.Channels, o.Sessions)
	}
	if err := brokers.ValidateChannel(o.Prefix + ".0"); err != nil {
		bad("--prefix %q: %v", o.Prefix, err)
	}
	for _, r := range splitList(*rates) {
		v, err := strconv.ParseFloat(r, 64)
		if err != nil || v < 0 || v > maxRate || v != v {
			bad("--rate %q: must be a number of messages per second, 0..%d", r, maxRate)
			continue
		}
		o.Rates = append(o.Rates, v)
	}
	if len(o.Rates) == 0 {
		bad("--rate: at least one rate is required")
	}
	if len(o.Rates) > 1 {
		for _, r := range o.Rates {
			if r == 0 {
				bad("--rate: 0 (idle) cannot be one step of several")
			}
		}
	}
	if o.Duration <= 0 || o.Duration > maxDuration {
		bad("--duration %v: must be > 0 and at most %v", o.Duration, maxDuration)
	}
	if o.Drain < 0 || o.Drain > 10*time.Minute || o.Settle < 0 || o.Settle > 10*time.Minute {
		bad("--drain and --settle must be 0..10m")
	}
	if o.OpenTimeout <= 0 || o.OpenTimeout > 10*time.Minute {
		bad("--open-timeout %v: must be > 0 and at most 10m", o.OpenTimeout)
	}
	switch o.Publish {
	case "api":
		if o.APILanes < 1 || o.APILanes > 256 {
			bad("--api-lanes %d: must be 1..256", o.APILanes)
		}
	case "nats":
		if err := checkNATSURL(o.NATSURL); err != nil {
			bad("--nats-url %s", err)
		}
	default:
		bad("--publish %q: must be api or nats", o.Publish)
	}
	for _, p := range splitList(*pids) {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 {
			bad("--pid %q: not a process id", p)
			continue
		}
		o.PIDs = append(o.PIDs, v)
	}
	switch m := strings.TrimSpace(*metrics); {
	case m == "off":
	case m != "":
		for _, raw := range splitList(m) {
			if err := checkMetricsURL(raw); err != nil {
				bad("--metrics-url %s", err)
			}
			o.MetricsURLs = append(o.MetricsURLs, raw)
		}
	case len(o.PIDs) > 0:
		for _, u := range o.URLs {
			o.MetricsURLs = append(o.MetricsURLs, u.String()+"/metrics")
		}
	}
	ips, err := parseSrcIPs(*srcIPs)
	if err != nil {
		bad("--src-ips %s", err)
	}
	o.SrcIPs = ips
	if o.Ramp <= 0 || o.Ramp > 100_000 {
		bad("--ramp %v: must be > 0 and at most 100000 sessions/s", o.Ramp)
	}
	if o.Payload < 0 || o.Payload > maxPayload {
		bad("--payload %d: must be 0..%d", o.Payload, maxPayload)
	}
	if o.ReadBuffer < 512 || o.ReadBuffer > 1<<20 {
		bad("--read-buffer %d: must be 512..1048576", o.ReadBuffer)
	}
	if o.Procs < -1 || o.Procs > 64 {
		bad("--procs %d: must be -1 (automatic) or 0..64", o.Procs)
	}
	if o.MaxP99 < 0 {
		bad("--max-p99 must not be negative")
	}
	o.Floor = floor.set && floor.v || !floor.set && len(o.PIDs) > 0
	if o.Floor && len(o.PIDs) == 0 {
		bad("--floor needs --pid: the floor's writer runs on the gateway's CPUs")
	}
	if o.FloorTime < 100*time.Millisecond || o.FloorTime > 10*time.Second {
		bad("--floor-time %v: must be 100ms..10s", o.FloorTime)
	}
	if o.Deflate && o.Transport != "ws" {
		bad("--deflate: only the ws transport compresses, not %s", o.Transport)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseGatewayURL accepts http://HOST:PORT with a loopback host: the bench
// opens thousands of connections and must never point them at another
// machine.
func parseGatewayURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", raw, err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%q: the scheme must be http", raw)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: give the gateway's base URL, http://HOST:PORT", raw)
	}
	if err := checkLoopbackHost(u.Hostname()); err != nil {
		return nil, fmt.Errorf("%q: %w", raw, err)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "80")
	}
	u.Path = ""
	return u, nil
}

// checkMetricsURL accepts any http URL on a loopback host.
func checkMetricsURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	if u.Scheme != "http" {
		return fmt.Errorf("%q: the scheme must be http", raw)
	}
	if err := checkLoopbackHost(u.Hostname()); err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	return nil
}

func checkNATSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	if u.Scheme != "nats" {
		return fmt.Errorf("%q: the scheme must be nats", raw)
	}
	return checkLoopbackHost(u.Hostname())
}

// checkLoopbackHost refuses anything but a loopback IP or "localhost".
func checkLoopbackHost(host string) error {
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Unmap().IsLoopback() {
		return fmt.Errorf("host %q is not a loopback address: cometbench only loads this machine (use 127.0.0.1)", host)
	}
	return nil
}

// parseSrcIPs parses "127.0.0.1-127.0.0.20", "127.0.0.1,127.0.0.2" or a
// single address; every address must be loopback IPv4 (all of 127/8 is
// routed to lo on Linux).
func parseSrcIPs(s string) ([]net.IP, error) {
	var out []net.IP
	add := func(a netip.Addr) error {
		if !a.Is4() || !a.IsLoopback() {
			return fmt.Errorf("%s is not a loopback IPv4 address (127.x.y.z)", a)
		}
		if len(out) >= maxSrcIPs {
			return fmt.Errorf("more than %d addresses", maxSrcIPs)
		}
		out = append(out, net.IP(a.AsSlice()))
		return nil
	}
	for _, part := range splitList(s) {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		if !isRange {
			if err := add(a); err != nil {
				return nil, err
			}
			continue
		}
		b, err := netip.ParseAddr(strings.TrimSpace(hi))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		if b.Less(a) {
			return nil, fmt.Errorf("%q: the range ends before it starts", part)
		}
		for x := a; ; x = x.Next() {
			if err := add(x); err != nil {
				return nil, err
			}
			if x == b {
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no source address")
	}
	return out, nil
}

// optionalBool is a boolean flag that knows whether it was given, for a
// default that depends on other flags.
type optionalBool struct{ v, set bool }

func (b *optionalBool) String() string {
	if b == nil || !b.set {
		return "auto"
	}
	return strconv.FormatBool(b.v)
}

func (b *optionalBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	b.v, b.set = v, true
	return nil
}

// IsBoolFlag lets the flag be given alone (--floor).
func (b *optionalBool) IsBoolFlag() bool { return true }
