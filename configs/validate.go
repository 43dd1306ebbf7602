package configs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/gateway"
	"github.com/cometgate/cometgate/transports"
)

var (
	nodeIDRe        = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
	subjectPrefixRe = regexp.MustCompile(`^([A-Za-z0-9_-]+\.)+$`)
	hostnameRe      = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
)

// Validate checks every value against the rules documented in
// cometgate.yaml and returns all problems found, joined, each naming its
// key and rule, e.g. "configs: session.queue_bytes: must be at least 4096,
// got 12". It does not change c and returns nil for a valid config. Load
// calls it; call it again after changing a Config in code.
//
// Each section has its own step. Rules another package owns are that
// package's: the channel grammar is brokers', and the SockJS endpoints and
// bridge targets, once their keys pass the checks here, must also pass
// transports.ValidateSockJS and transports.ValidateBridge (prefixes the
// node serves itself, nested prefixes, client URLs, ...).
func (c *Config) Validate() error {
	v := &validator{}
	v.node(&c.Node)
	v.http(&c.HTTP)
	v.api(&c.API)
	v.auth(&c.Auth)
	v.broker(&c.Broker)
	v.session(&c.Session)
	v.atLeast("websocket.compression_threshold", c.WebSocket.CompressionThreshold, 1)
	v.limits(&c.Limits)
	v.channels(c.Channels, c.Auth.Mode, c.Broker.Kind)
	sockjsOK := v.sockjs(c.SockJS, c.Bridge.Targets)
	if bridgeOK := v.bridge(&c.Bridge, c.Auth.Mode); sockjsOK && bridgeOK {
		v.transports(c)
	}
	v.oneOf("log.level", c.Log.Level, LogDebug, LogInfo, LogWarn, LogError)
	v.oneOf("log.format", c.Log.Format, LogText, LogJSON)
	if c.Admin.Listen != "" {
		v.listen("admin.listen", c.Admin.Listen)
	}
	v.oneOf("demo.enabled", c.Demo.Enabled, DemoAuto, DemoOn, DemoOff)
	return errors.Join(v.errs...)
}

func (v *validator) node(n *Node) {
	if n.ID != "" && !nodeIDRe.MatchString(n.ID) {
		v.failf("node.id", "must be 1 to 16 characters of [a-z0-9], got %q", n.ID)
	}
	if n.AdvertiseURL != "" {
		if err := checkAdvertiseURL(n.AdvertiseURL); err != nil {
			v.failf("node.advertise_url", "%v", err)
		}
	}
	if n.ClusterKey != "" && len(n.ClusterKey) < 32 {
		v.failf("node.cluster_key", "must be at least 32 bytes (it signs the nodes' messages), got %d", len(n.ClusterKey))
	}
	for i, p := range n.PeerNetworks {
		if _, err := parseProxy(p); err != nil {
			v.failf(fmt.Sprintf("node.peer_networks[%d]", i), "must be an IP address or a CIDR prefix such as 10.0.0.0/8, got %q", p)
		}
	}
}

func (v *validator) http(h *HTTP) {
	v.listen("http.listen", h.Listen)
	v.positive("http.read_header_timeout", h.ReadHeaderTimeout)
	v.positive("http.read_body_timeout", h.ReadBodyTimeout)
	v.positive("http.idle_timeout", h.IdleTimeout)
	v.positive("http.shutdown_timeout", h.ShutdownTimeout)
	for i, o := range h.AllowedOrigins {
		if err := checkOrigin(o); err != nil {
			v.failf(fmt.Sprintf("http.allowed_origins[%d]", i), "%v", err)
		}
	}
	for i, host := range h.AllowedHosts {
		if host != "*" && net.ParseIP(host) == nil && !hostnameRe.MatchString(host) {
			v.failf(fmt.Sprintf("http.allowed_hosts[%d]", i), `must be "*", a DNS name or an IP address (no port, no scheme), got %q`, host)
		}
	}
	for i, p := range h.TrustedProxies {
		if _, err := parseProxy(p); err != nil {
			v.failf(fmt.Sprintf("http.trusted_proxies[%d]", i), "must be an IP address or a CIDR prefix such as 10.0.0.0/8, got %q", p)
		}
	}
	v.atLeast("http.max_sessions_per_ip", h.MaxSessionsPerIP, 0)
}

func (v *validator) api(a *API) {
	for i, k := range a.Keys {
		if k == "" { // never echo a key: it is a secret
			v.failf(fmt.Sprintf("api.keys[%d]", i), "must not be empty")
		}
	}
	v.atLeast("api.max_body_bytes", a.MaxBodyBytes, 1)
}

func (v *validator) auth(au *Auth) {
	jwt := au.Mode == AuthJWT
	v.oneOf("auth.mode", au.Mode, AuthNone, AuthJWT, AuthWebhook)
	switch {
	case !jwt:
	case au.HMACSecret != "" && au.PublicKeyFile != "":
		v.failf("auth", "set either hmac_secret or public_key_file, not both")
	case au.HMACSecret == "" && au.PublicKeyFile == "" && len(au.Keys) == 0 && au.JWKS.URL == "":
		v.failf("auth", "mode jwt needs hmac_secret, public_key_file, keys or jwks.url")
	case au.HMACSecret != "" && len(au.HMACSecret) < 32:
		// A short shared secret can be brute-forced offline from any one
		// token. Its value is never echoed.
		v.failf("auth.hmac_secret", "must be at least 32 bytes, got %d", len(au.HMACSecret))
	}
	if jwt {
		v.authKeys(au)
		v.jwks(&au.JWKS)
	}
	v.positive("auth.revocation_ttl", au.RevocationTTL)
	if au.Leeway < 0 {
		v.failf("auth.leeway", "must not be negative, got %s", au.Leeway)
	}
	if au.Required && au.Mode == AuthNone {
		v.failf("auth.required", "true needs auth.mode jwt or webhook")
	}
	if au.Mode == AuthWebhook {
		w := &au.Webhook
		if w.URL == "" {
			v.failf("auth.webhook.url", "mode webhook needs the application's URL")
		} else {
			v.fetchURL("auth.webhook.url", w.URL)
		}
		for i, h := range w.Headers {
			if h == "" || strings.ContainsAny(h, " :\r\n") || strings.EqualFold(h, "Host") {
				v.failf(fmt.Sprintf("auth.webhook.headers[%d]", i), "must be a header name (not Host), got %q", h)
			}
		}
		v.positive("auth.webhook.timeout", w.Timeout)
		v.positive("auth.webhook.cache_ttl", w.CacheTTL)
	}
}

// authKeys checks auth.keys: ids present and distinct (a token's "kid"
// picks one), one key each, an algorithm of a known name. Whether the
// algorithm goes with a key file's type is checked where the file is
// read, at start-up.
func (v *validator) authKeys(au *Auth) {
	single := au.HMACSecret != "" || au.PublicKeyFile != ""
	seen := make(map[string]bool)
	for i, k := range au.Keys {
		key := fmt.Sprintf("auth.keys[%d]", i)
		switch {
		case k.ID == "":
			v.failf(key+".id", "is required: it is the \"kid\" of the tokens the key verifies")
		case seen[k.ID]:
			v.failf(key+".id", "%q is listed twice", k.ID)
		}
		seen[k.ID] = true
		switch {
		case (k.HMACSecret == "") == (k.PublicKeyFile == ""):
			v.failf(key, "set exactly one of hmac_secret and public_key_file")
		case k.HMACSecret != "" && len(k.HMACSecret) < 32:
			v.failf(key+".hmac_secret", "must be at least 32 bytes, got %d", len(k.HMACSecret))
		}
		if k.Algorithm != "" {
			v.oneOf(key+".algorithm", k.Algorithm, "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
		}
	}
	if single && len(au.Keys) > 0 {
		// The single key has no id: among several, tokens could not name it.
		v.failf("auth", "set hmac_secret or public_key_file, or keys, not both (list every key under keys, each with its id)")
	}
}

// jwks checks auth.jwks: a URL the node may trust keys from and positive
// intervals.
func (v *validator) jwks(j *AuthJWKS) {
	if j.URL == "" {
		return
	}
	v.fetchURL("auth.jwks.url", j.URL)
	v.positive("auth.jwks.refresh", j.Refresh)
	v.positive("auth.jwks.min_refetch", j.MinRefetch)
	v.positive("auth.jwks.max_age", j.MaxAge)
	v.positive("auth.jwks.timeout", j.Timeout)
}

// fetchURL checks the URL of something the node trusts what it fetches
// from (keys, principals): https, or http only to a loopback address
// (what travels in the clear could be replaced on the way).
func (v *validator) fetchURL(key, raw string) {
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Host == "":
		v.failf(key, "must be an absolute URL, got %q", raw)
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
	default:
		v.failf(key, "must be https (http only to a loopback address), got %q", raw)
	}
}

// isLoopbackHost reports whether host is localhost or a loopback address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

func (v *validator) broker(b *Broker) {
	v.oneOf("broker.kind", b.Kind, BrokerEmbedded, BrokerNATS, BrokerAMQP)
	if b.SubjectPrefix != "" && !subjectPrefixRe.MatchString(b.SubjectPrefix) {
		v.failf("broker.subject_prefix", `must be "" or dot-terminated tokens of [A-Za-z0-9_-] such as "cg.", got %q`, b.SubjectPrefix)
	}
	v.positive("broker.publish_timeout", b.PublishTimeout)
	if b.DedupeWindow < 0 {
		v.failf("broker.dedupe_window", "must not be negative, got %s", b.DedupeWindow)
	}
	v.atLeast("broker.dedupe_max", b.DedupeMax, 1)
	if b.Embedded.Listen != "" {
		v.listen("broker.embedded.listen", b.Embedded.Listen)
	}
	e := &b.Embedded
	switch {
	case e.Token != "" && (e.User != "" || e.Password != ""):
		v.failf("broker.embedded", "set either user and password or token, not both")
	case (e.User == "") != (e.Password == ""):
		v.failf("broker.embedded", "user and password go together")
	}
	v.nats(&b.NATS, b.Kind == BrokerNATS)
	v.amqp(&b.AMQP, b.Kind == BrokerAMQP)
}

// nats checks broker.nats; used says broker.kind is nats.
func (v *validator) nats(n *NATS, used bool) {
	if used && len(n.URLs) == 0 {
		v.failf("broker.nats.urls", "must list at least one server URL when broker.kind is nats")
	}
	for i, u := range n.URLs {
		if strings.TrimSpace(u) == "" { // URLs may hold credentials: not echoed
			v.failf(fmt.Sprintf("broker.nats.urls[%d]", i), "must not be empty")
		}
	}
	if n.Password != "" && n.User == "" {
		v.failf("broker.nats.password", "requires broker.nats.user")
	}
	var auth []string
	for _, m := range []struct{ name, value string }{
		{"user", n.User}, {"token", n.Token}, {"nkey_seed_file", n.NKeySeedFile}, {"creds_file", n.CredsFile},
	} {
		if m.value != "" {
			auth = append(auth, m.name)
		}
	}
	if len(auth) > 1 {
		v.failf("broker.nats", "set only one authentication method, got %s", strings.Join(auth, " and "))
	}
	if (n.TLS.CertFile == "") != (n.TLS.KeyFile == "") {
		v.failf("broker.nats.tls", "cert_file and key_file must be set together")
	}
	v.backoff("broker.nats", n.ReconnectWait, n.MaxReconnectWait)
}

// amqp checks broker.amqp; used says broker.kind is amqp.
func (v *validator) amqp(a *AMQP, used bool) {
	if a.URL == "" {
		if used {
			v.failf("broker.amqp.url", "must be set when broker.kind is amqp")
		}
	} else if u, err := url.Parse(a.URL); err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" {
		// The URL may hold a password: not echoed.
		v.failf("broker.amqp.url", "must be an amqp:// or amqps:// URL with a host")
	}
	if a.Exchange == "" {
		v.failf("broker.amqp.exchange", "must not be empty")
	}
	v.oneOf("broker.amqp.exchange_type", a.ExchangeType, "topic")
	if a.Prefetch < 1 || a.Prefetch > 65535 {
		v.failf("broker.amqp.prefetch", "must be between 1 and 65535, got %d", a.Prefetch)
	}
	if a.QueueMaxLength < 0 {
		v.failf("broker.amqp.queue_max_length", "must not be negative, got %d", a.QueueMaxLength)
	}
	v.backoff("broker.amqp", a.ReconnectWait, a.MaxReconnectWait)
}

func (v *validator) session(s *Session) {
	v.atLeast("session.queue_bytes", s.QueueBytes, 4096)
	v.atLeast("session.max_frame_bytes", s.MaxFrameBytes, 256)
	v.atLeast("session.max_subscriptions", s.MaxSubscriptions, 1)
	v.minDuration("session.heartbeat", s.Heartbeat, time.Second)
	v.positive("session.write_timeout", s.WriteTimeout)
	v.positive("session.disconnect_delay", s.DisconnectDelay)
	v.atLeast("session.stream_limit_bytes", s.StreamLimitBytes, 4096)
	if s.SendBatch < 1 || s.SendBatch > gateway.DefaultSendBatch {
		v.failf("session.send_batch", "must be between 1 and %d, got %d", gateway.DefaultSendBatch, s.SendBatch)
	}
}

func (v *validator) limits(l *Limits) {
	v.rate("limits.frames_per_second", "limits.frame_burst", l.FramesPerSecond, l.FrameBurst)
	v.rate("limits.publishes_per_second", "limits.publish_burst", l.PublishesPerSecond, l.PublishBurst)
	v.rate("limits.new_sessions_per_ip_per_second", "limits.new_sessions_per_ip_burst", l.NewSessionsPerIPPerSecond, l.NewSessionsPerIPBurst)
	v.rate("limits.new_sessions_per_second", "limits.new_sessions_burst", l.NewSessionsPerSecond, l.NewSessionsBurst)
	v.atLeast("limits.max_sessions", l.MaxSessions, 0)
}

// rate checks a token bucket: a rate >= 0 (0: unlimited) and, for a
// limited rate, a burst of at least one event.
func (v *validator) rate(rateKey, burstKey string, rate, burst int) {
	v.atLeast(rateKey, rate, 0)
	if rate > 0 {
		v.atLeast(burstKey, burst, 1)
	}
}

// channels checks the namespaces; permissions and history depend on
// auth.mode and broker.kind.
func (v *validator) channels(chs []Channel, authMode, brokerKind string) {
	seen := map[string]int{}
	for i, ch := range chs {
		key := fmt.Sprintf("channels[%d]", i)
		if err := checkPattern(ch.Pattern); err != nil {
			v.failf(key+".pattern", "%v", err)
		} else if j, dup := seen[ch.Pattern]; dup {
			v.failf(key+".pattern", "%q repeats channels[%d].pattern, so this entry never applies", ch.Pattern, j)
		} else {
			seen[ch.Pattern] = i
		}
		for _, perm := range []struct{ key, val string }{{key + ".subscribe", ch.Subscribe}, {key + ".publish", ch.Publish}} {
			if v.oneOf(perm.key, perm.val, PermissionAnyone, PermissionNobody, PermissionToken) && perm.val == PermissionToken && authMode == AuthNone {
				v.failf(perm.key, "token needs auth.mode jwt or webhook, got auth.mode %q", authMode)
			}
		}
		v.oneOf(key+".slow_consumer", ch.SlowConsumer, SlowConsumerDisconnect, SlowConsumerDropOldest, SlowConsumerConflate)
		v.history(key, &ch, brokerKind)
	}
}

// history checks the history keys of the namespace at key.
func (v *validator) history(key string, ch *Channel, brokerKind string) {
	if v.oneOf(key+".history", ch.History, HistoryNone, HistoryJetStream, HistoryStream, HistoryAuto) {
		switch {
		case ch.History == HistoryJetStream && brokerKind == BrokerAMQP:
			v.failf(key+".history", "jetstream needs broker.kind embedded or nats, not amqp")
		case ch.History == HistoryStream && brokerKind != BrokerAMQP:
			v.failf(key+".history", "stream (a RabbitMQ stream queue) needs broker.kind amqp, not %s", brokerKind)
		}
	}
	if ch.HistoryMaxAge < 0 {
		v.failf(key+".history_max_age", "must not be negative, got %s", ch.HistoryMaxAge)
	}
	if ch.HistoryMaxBytes < 0 {
		v.failf(key+".history_max_bytes", "must not be negative, got %d", ch.HistoryMaxBytes)
	}
	if ch.HistoryReplicas < 0 || ch.HistoryReplicas > 5 {
		v.failf(key+".history_replicas", "must be 0 to 5 (JetStream's most), got %d", ch.HistoryReplicas)
	}
	if ch.HistoryStream != "" && !validStreamName(ch.HistoryStream) {
		v.failf(key+".history_stream", "must be 1 to 64 characters of [A-Za-z0-9_-], got %q", ch.HistoryStream)
	}
}

// sockjs checks the keys of the SockJS endpoints and reports whether they
// all passed.
func (v *validator) sockjs(eps []SockJS, targets []BridgeTarget) bool {
	before := len(v.errs)
	prefixes := map[string]int{}
	for i, sj := range eps {
		key := fmt.Sprintf("sockjs[%d]", i)
		if !strings.HasPrefix(sj.Prefix, "/") || strings.HasSuffix(sj.Prefix, "/") || strings.ContainsAny(sj.Prefix, "?#* ") {
			v.failf(key+".prefix", `must be a path like "/sockjs": starting with "/", not ending with one, got %q`, sj.Prefix)
		} else if j, dup := prefixes[sj.Prefix]; dup {
			v.failf(key+".prefix", "%q repeats sockjs[%d].prefix", sj.Prefix, j)
		} else {
			prefixes[sj.Prefix] = i
		}
		v.oneOf(key+".mode", sj.Mode, SockJSPubSub, SockJSEcho, SockJSTCP, SockJSClose)
		switch {
		case sj.Mode == SockJSTCP && !slices.ContainsFunc(targets, func(t BridgeTarget) bool { return t.Name == sj.Target }):
			v.failf(key+".target", "must name one of bridge.targets, got %q", sj.Target)
		case sj.Mode != SockJSTCP && sj.Target != "":
			v.failf(key+".target", "only a tcp endpoint has a target; write \"\" or remove the key")
		}
		v.atLeast(key+".response_limit", sj.ResponseLimit, 4096)
		v.minDuration(key+".heartbeat_delay", sj.HeartbeatDelay, time.Second)
		v.positive(key+".disconnect_delay", sj.DisconnectDelay)
	}
	return len(v.errs) == before
}

// bridge checks the keys of the bridge section and reports whether they
// all passed.
func (v *validator) bridge(b *Bridge, authMode string) bool {
	before := len(v.errs)
	v.positive("bridge.dial_timeout", b.DialTimeout)
	names := map[string]int{}
	for i, t := range b.Targets {
		key := fmt.Sprintf("bridge.targets[%d]", i)
		if !validTargetName(t.Name) {
			v.failf(key+".name", "must be 1 to 64 characters of [A-Za-z0-9_.-], got %q", t.Name)
		} else if j, dup := names[t.Name]; dup {
			v.failf(key+".name", "%q repeats bridge.targets[%d].name", t.Name, j)
		} else {
			names[t.Name] = i
		}
		if host, port, err := net.SplitHostPort(t.Address); err != nil || host == "" || !validPort(port) {
			v.failf(key+".address", "must be host:port with a port 1-65535, got %q", t.Address)
		}
		if t.MaxConnections < 0 {
			v.failf(key+".max_connections", "must be 0 (no bound) or more, got %d", t.MaxConnections)
		}
		v.oneOf(key+".access", t.Access, PermissionAnyone, PermissionToken)
		if t.Access == PermissionToken && authMode == AuthNone {
			v.failf(key+".access", "token needs auth.mode jwt or webhook, not %s", authMode)
		}
		for j, n := range t.AllowNetworks {
			if _, err := netip.ParsePrefix(n); err != nil {
				v.failf(fmt.Sprintf("%s.allow_networks[%d]", key, j), "must be a CIDR prefix such as 10.0.0.0/8 or fd00::/8, got %q", n)
			}
		}
	}
	return len(v.errs) == before
}

// transports applies the transports package's own rules to the SockJS
// endpoints and bridge targets, whose keys passed the checks above.
func (v *validator) transports(c *Config) {
	eps, targets := c.SockJSEndpoints(), c.BridgeTargets()
	if err := transports.ValidateSockJS(eps); err != nil {
		v.failf("sockjs", "%v", err)
	}
	if err := transports.ValidateBridge(targets, eps); err != nil {
		v.failf("bridge", "%v", err)
	}
}

// validator collects the problems of a Config, each naming its key.
type validator struct{ errs []error }

func (v *validator) failf(key, format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf("configs: %s: %s", key, fmt.Sprintf(format, args...)))
}

// oneOf reports whether val is allowed, recording an error if not.
func (v *validator) oneOf(key, val string, allowed ...string) bool {
	if slices.Contains(allowed, val) {
		return true
	}
	v.failf(key, "must be one of %s, got %q", strings.Join(allowed, " | "), val)
	return false
}

func (v *validator) atLeast(key string, n, min int) {
	if n < min {
		v.failf(key, "must be at least %d, got %d", min, n)
	}
}

func (v *validator) minDuration(key string, d, min time.Duration) {
	if d < min {
		v.failf(key, "must be at least %s, got %s", min, d)
	}
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.failf(key, "must be greater than 0, got %s", d)
	}
}

func (v *validator) backoff(section string, wait, maxWait time.Duration) {
	v.positive(section+".reconnect_wait", wait)
	if wait > 0 && maxWait < wait {
		v.failf(section+".max_reconnect_wait", "must be at least reconnect_wait (%s), got %s", wait, maxWait)
	}
}

func (v *validator) listen(key, addr string) {
	if err := checkListen(addr); err != nil {
		v.failf(key, "%v", err)
	}
}

// checkListen accepts host:port with a numeric port 0-65535; the host may
// be empty (all interfaces).
func checkListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf(`must be host:port such as "127.0.0.1:8080" or ":8080", got %q`, addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port must be a number 0-65535, got %q", addr)
	}
	return nil
}

// checkOrigin accepts "*" or an origin exactly as browsers send it.
func checkOrigin(o string) error {
	if o == "*" {
		return nil
	}
	const rule = `must be "*" or scheme://host[:port] with scheme http or https and nothing after the host`
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		o != u.Scheme+"://"+u.Host || strings.HasSuffix(u.Host, ":") {
		return fmt.Errorf("%s, got %q", rule, o)
	}
	if o != strings.ToLower(o) {
		return fmt.Errorf("must be lower case as browsers send it, got %q", o)
	}
	if host := u.Hostname(); net.ParseIP(host) == nil && !hostnameRe.MatchString(host) {
		return fmt.Errorf("host must be a DNS name or IP address (no wildcards), got %q", o)
	}
	switch port := u.Port(); {
	case port == "":
	case (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443"):
		return fmt.Errorf("must not name the default port (browsers omit it), got %q", o)
	default:
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("port must be a number 1-65535, got %q", o)
		}
	}
	return nil
}

// checkAdvertiseURL accepts a node's base URL: http or https, a DNS name or
// an IP address that is not unspecified (other nodes must be able to
// connect to it), an optional port, and nothing after.
func checkAdvertiseURL(s string) error {
	const rule = `must be http(s)://host[:port] with nothing after the host, such as "http://10.0.0.5:8080"`
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		s != u.Scheme+"://"+u.Host || strings.HasSuffix(u.Host, ":") {
		return fmt.Errorf("%s, got %q", rule, s)
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() {
			return fmt.Errorf("host must be an address other nodes can connect to, not %q", host)
		}
	} else if !hostnameRe.MatchString(strings.ToLower(host)) {
		return fmt.Errorf("host must be a DNS name or IP address, got %q", s)
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("port must be a number 1-65535, got %q", s)
		}
	}
	return nil
}

// checkPattern checks a namespace pattern with the channel grammar's
// owner, brokers, and words its rule for the YAML: the key, the rule, then
// the value as given (unless it is empty, or too long to be worth echoing).
func checkPattern(p string) error {
	err := brokers.ValidatePattern(p)
	var ne *brokers.NameError
	if !errors.As(err, &ne) {
		return err
	}
	if p == "" || len(p) > brokers.MaxNameLen {
		return errors.New(ne.Rule)
	}
	return fmt.Errorf("%s, got %q", ne.Rule, p)
}

// validStreamName accepts names that are valid both as a JetStream stream
// and as a RabbitMQ queue.
func validStreamName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validTargetName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

func validPort(s string) bool {
	p, err := strconv.ParseUint(s, 10, 16)
	return err == nil && p > 0
}
