package configs

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/cometgate/cometgate/transports"
)

//go:embed cometgate.yaml
var reference []byte

// Reference returns a copy of the embedded reference configuration
// (cometgate.yaml): every key, documented, with its default value. It is
// what a "print the default config" command should write.
func Reference() []byte { return bytes.Clone(reference) }

// EnvPrefix starts the name of every environment variable that overrides a
// key: EnvPrefix + the key path in upper case with "." replaced by "_".
const EnvPrefix = "COMETGATE_"

// Values of Broker.Kind.
const (
	BrokerEmbedded = "embedded"
	BrokerNATS     = "nats"
	BrokerAMQP     = "amqp"
)

// Values of Channel.Subscribe and Channel.Publish.
const (
	PermissionAnyone = "anyone"
	PermissionNobody = "nobody"
	// PermissionToken grants what a session's token grants (needs
	// Auth.Mode AuthJWT).
	PermissionToken = "token"
)

// Values of Auth.Mode.
const (
	AuthNone = "none"
	AuthJWT  = "jwt"
	// AuthWebhook asks the application who a browser is (auth.webhook).
	AuthWebhook = "webhook"
)

// Values of Channel.SlowConsumer.
const (
	SlowConsumerDisconnect = "disconnect"
	SlowConsumerDropOldest = "drop_oldest"
	SlowConsumerConflate   = "conflate"
)

// Values of SockJS.Mode.
const (
	SockJSPubSub = "pubsub"
	SockJSEcho   = "echo"
	SockJSTCP    = "tcp"
	SockJSClose  = "close"
)

// Values of Channel.History.
const (
	HistoryNone      = "none"
	HistoryJetStream = "jetstream"
	HistoryStream    = "stream"
	// HistoryAuto is HistoryJetStream with the embedded broker, whose
	// streams live in this process and cost the operator nothing, and
	// HistoryNone with an external broker, whose streams are the
	// operator's to plan (Channel.EffectiveHistory).
	HistoryAuto = "auto"
)

// Values of Demo.Enabled.
const (
	// DemoAuto runs the demo backend with the embedded broker only.
	DemoAuto = "auto"
	DemoOn   = "on"
	DemoOff  = "off"
)

// Values of Log.Level and Log.Format.
const (
	LogDebug = "debug"
	LogInfo  = "info"
	LogWarn  = "warn"
	LogError = "error"
	LogText  = "text"
	LogJSON  = "json"
)

// Config is the whole cometgate configuration, one field per top-level
// section of cometgate.yaml. It is plain data: Load returns a new value that
// the caller owns; nothing in this package keeps or changes it afterwards,
// so concurrent reads are safe. Units: durations are time.Duration, sizes
// are bytes.
type Config struct {
	Node      Node      `mapstructure:"node"`
	HTTP      HTTP      `mapstructure:"http"`
	API       API       `mapstructure:"api"`
	Auth      Auth      `mapstructure:"auth"`
	Broker    Broker    `mapstructure:"broker"`
	Session   Session   `mapstructure:"session"`
	WebSocket WebSocket `mapstructure:"websocket"`
	Channels  []Channel `mapstructure:"channels"`
	SockJS    []SockJS  `mapstructure:"sockjs"`
	Bridge    Bridge    `mapstructure:"bridge"`
	Log       Log       `mapstructure:"log"`
	Metrics   Metrics   `mapstructure:"metrics"`
	Admin     Admin     `mapstructure:"admin"`
	Limits    Limits    `mapstructure:"limits"`
	Demo      Demo      `mapstructure:"demo"`
}

// Demo switches the built-in demo backend (package web/demo), which feeds
// the ticker, auction and election pages.
type Demo struct {
	// Enabled is DemoAuto (on with broker.kind embedded only), DemoOn or
	// DemoOff.
	Enabled string `mapstructure:"enabled"`
}

// DemoRuns reports whether the node runs the demo backend.
func (c *Config) DemoRuns() bool {
	switch c.Demo.Enabled {
	case DemoOn:
		return true
	case DemoAuto:
		return c.Broker.Kind == BrokerEmbedded
	}
	return false
}

// Node identifies this gateway node among the nodes sharing a broker.
type Node struct {
	// ID is the first token of every session id this node issues. "" means
	// the caller picks a random 6-character [a-z0-9] id at start-up.
	ID string `mapstructure:"id"`
	// AdvertiseURL is the base URL other nodes reach this node's HTTP
	// listener at, "http(s)://host[:port]", used to forward requests for
	// this node's sessions to it. "" means derived from http.listen when
	// its host is a concrete address, and forwarding off when it is not.
	AdvertiseURL string `mapstructure:"advertise_url"`
	// ClusterKey signs the nodes' messages and forwarded requests; ""
	// means unsigned. Secret: never log it.
	ClusterKey string `mapstructure:"cluster_key"`
	// PeerNetworks are where other nodes may be (IPs or CIDR prefixes);
	// empty means the private and loopback ranges (PeerPrefixes).
	PeerNetworks []string `mapstructure:"peer_networks"`
}

// PeerPrefixes is PeerNetworks parsed (Validate checked them), or nil for
// the default ranges.
func (n *Node) PeerPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range n.PeerNetworks {
		if p, err := parseProxy(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// HTTP configures the main HTTP listener.
type HTTP struct {
	// Listen is the host:port of the main listener.
	Listen string `mapstructure:"listen"`
	// ReadHeaderTimeout bounds the time to read request headers (slowloris).
	ReadHeaderTimeout time.Duration `mapstructure:"read_header_timeout"`
	// ReadBodyTimeout bounds the time to read a request body (slowloris
	// with a trickled body).
	ReadBodyTimeout time.Duration `mapstructure:"read_body_timeout"`
	// IdleTimeout bounds how long an idle keep-alive connection stays open.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// ShutdownTimeout bounds a graceful shutdown.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// AllowedOrigins lists the origins accepted for WebSocket and CORS:
	// "*" or exact lower-case "scheme://host[:port]". Empty means same host only.
	AllowedOrigins []string `mapstructure:"allowed_origins"`
	// AllowedHosts lists the Host names the node answers ("*": any);
	// empty means a default that depends on Listen (EffectiveAllowedHosts).
	AllowedHosts []string `mapstructure:"allowed_hosts"`
	// TrustedProxies lists the reverse proxies (IPs or CIDR prefixes)
	// whose X-Forwarded-For and X-Forwarded-Proto are believed.
	TrustedProxies []string `mapstructure:"trusted_proxies"`
	// MaxSessionsPerIP bounds concurrent sessions per client (an IPv4
	// address or an IPv6 /64); 0 = unlimited.
	MaxSessionsPerIP int `mapstructure:"max_sessions_per_ip"`
}

// EffectiveAllowedHosts is AllowedHosts, or when it is empty: localhost
// and the loopback addresses for a listener on a loopback host, nil (any
// host) otherwise.
func (h *HTTP) EffectiveAllowedHosts() []string {
	if len(h.AllowedHosts) > 0 {
		return h.AllowedHosts
	}
	host, _, err := net.SplitHostPort(h.Listen)
	if err != nil {
		return nil
	}
	if ip, err := netip.ParseAddr(host); (err == nil && ip.IsLoopback()) || strings.EqualFold(host, "localhost") {
		return []string{"localhost", "127.0.0.1", "::1"}
	}
	return nil
}

// TrustedProxyPrefixes is TrustedProxies parsed (Validate checked them);
// an address stands for its own /32 or /128.
func (h *HTTP) TrustedProxyPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range h.TrustedProxies {
		if p, err := parseProxy(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// parseProxy reads a trusted proxy: an IP address or a CIDR prefix.
func parseProxy(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// API configures the HTTP publish API (POST /api/publish).
type API struct {
	// Keys are the accepted bearer tokens. Secrets: never log them.
	Keys []string `mapstructure:"keys"`
	// AllowLoopback lets requests from 127.0.0.0/8 and ::1 publish without a key.
	AllowLoopback bool `mapstructure:"allow_loopback"`
	// MaxBodyBytes bounds the request body.
	MaxBodyBytes int `mapstructure:"max_body_bytes"`
}

// Auth configures how browser sessions authenticate: with a token (a JWT)
// the application signed after its own login. With AuthJWT at least one
// key is configured: HMACSecret or PublicKeyFile (not both), or Keys
// (Validate checks it).
type Auth struct {
	// Mode is AuthNone (every session is anonymous), AuthJWT or
	// AuthWebhook.
	Mode string `mapstructure:"mode"`
	// HMACSecret verifies HS256/384/512 tokens; at least 32 bytes. Secret:
	// never log it.
	HMACSecret string `mapstructure:"hmac_secret"`
	// PublicKeyFile is the path of a PEM public key (RSA, ECDSA or
	// Ed25519) that verifies RS*, PS*, ES* or EdDSA tokens.
	PublicKeyFile string `mapstructure:"public_key_file"`
	// Keys are verification keys named by the tokens' "kid" (rotation).
	Keys []AuthKey `mapstructure:"keys"`
	// JWKS is a key set fetched from a URL (an identity provider's).
	JWKS AuthJWKS `mapstructure:"jwks"`
	// Webhook is the application's URL that says who a browser is (mode
	// webhook).
	Webhook AuthWebhookConfig `mapstructure:"webhook"`
	// Issuer, when not "", must be the token's "iss".
	Issuer string `mapstructure:"issuer"`
	// Audience, when not "", must be one of the token's "aud".
	Audience string `mapstructure:"audience"`
	// Leeway tolerates clock skew on "exp", "nbf" and "iat".
	Leeway time.Duration `mapstructure:"leeway"`
	// Required refuses sessions without a valid token.
	Required bool `mapstructure:"required"`
	// CallbackCookie lets JSONP and htmlfile authenticate with the token
	// cookie (see the reference file for why that is off by default).
	CallbackCookie bool `mapstructure:"callback_cookie"`
	// RevocationTTL is how long a revocation refuses the credentials its
	// subject held (gateway.Config.RevocationTTL).
	RevocationTTL time.Duration `mapstructure:"revocation_ttl"`
}

// AuthKey is one verification key of auth.keys: an ID and exactly one of
// HMACSecret and PublicKeyFile.
type AuthKey struct {
	// ID is the "kid" of the tokens the key verifies.
	ID string `mapstructure:"id"`
	// Algorithm, when not "", is the one algorithm the key verifies; it
	// must go with the key's type. "" = each of the type's.
	Algorithm string `mapstructure:"algorithm"`
	// HMACSecret, at least 32 bytes. Secret: never log it.
	HMACSecret string `mapstructure:"hmac_secret"`
	// PublicKeyFile is the path of a PEM public key (RSA, ECDSA, Ed25519).
	PublicKeyFile string `mapstructure:"public_key_file"`
}

// AuthJWKS configures auth.jwks: the key set of an identity provider,
// fetched and refreshed in the background.
type AuthJWKS struct {
	// URL of the key set; "" = none. https, or http to a loopback address.
	URL string `mapstructure:"url"`
	// Refresh is the time between two fetches.
	Refresh time.Duration `mapstructure:"refresh"`
	// MinRefetch is the least time between two fetches caused by tokens
	// naming a "kid" not held.
	MinRefetch time.Duration `mapstructure:"min_refetch"`
	// MaxAge is how long keys stay usable when the set cannot be fetched.
	MaxAge time.Duration `mapstructure:"max_age"`
	// Timeout bounds one fetch.
	Timeout time.Duration `mapstructure:"timeout"`
}

// AuthWebhookConfig configures auth.webhook.
type AuthWebhookConfig struct {
	// URL is called (GET) with the browser's cookies; https, or http to a
	// loopback address.
	URL string `mapstructure:"url"`
	// Headers are the request headers forwarded besides Cookie.
	Headers []string `mapstructure:"headers"`
	// Timeout bounds a call.
	Timeout time.Duration `mapstructure:"timeout"`
	// CacheTTL is how long an answer is reused.
	CacheTTL time.Duration `mapstructure:"cache_ttl"`
}

// Broker selects and configures the message broker. Only the sub-struct
// named by Kind is used; the others keep their defaults.
type Broker struct {
	// Kind is BrokerEmbedded, BrokerNATS or BrokerAMQP.
	Kind string `mapstructure:"kind"`
	// SubjectPrefix is prepended to every channel to form the broker
	// subject or routing key: "" or dot-terminated tokens, e.g. "cg.".
	SubjectPrefix string `mapstructure:"subject_prefix"`
	// PublishTimeout bounds the wait for a broker publish confirmation.
	PublishTimeout time.Duration `mapstructure:"publish_timeout"`
	// DedupeWindow is how long message ids are remembered to drop a
	// retried publish's second copy; 0 turns it off.
	DedupeWindow time.Duration `mapstructure:"dedupe_window"`
	// DedupeMax bounds the ids remembered per subscribed pattern.
	DedupeMax int `mapstructure:"dedupe_max"`
	// Embedded configures the in-process NATS server (Kind == BrokerEmbedded).
	Embedded Embedded `mapstructure:"embedded"`
	// NATS configures the external NATS connection (Kind == BrokerNATS).
	NATS NATS `mapstructure:"nats"`
	// AMQP configures the AMQP 0.9.1 connection (Kind == BrokerAMQP).
	AMQP AMQP `mapstructure:"amqp"`
}

// Embedded configures the embedded NATS server with JetStream.
type Embedded struct {
	// Listen is the TCP host:port for outside NATS clients; "" = in-process only.
	Listen string `mapstructure:"listen"`
	// StoreDir is the JetStream store directory; "" = a temporary directory
	// removed at exit.
	StoreDir string `mapstructure:"store_dir"`
	// User and Password, or Token, are what the listener asks of clients
	// (at most one kind). Secrets: never log them.
	User     string `mapstructure:"user"`
	Password string `mapstructure:"password"`
	Token    string `mapstructure:"token"`
}

// NATS configures the connection to an external NATS server or cluster.
// At most one authentication method is set (Validate checks it).
type NATS struct {
	// URLs are the seed server URLs.
	URLs []string `mapstructure:"urls"`
	// Name is the connection name shown in server monitoring.
	Name string `mapstructure:"name"`
	// User and Password are user/password credentials; "" = none.
	User string `mapstructure:"user"`
	// Password goes with User. Secret: never log it.
	Password string `mapstructure:"password"`
	// Token is token authentication; "" = none. Secret: never log it.
	Token string `mapstructure:"token"`
	// NKeySeedFile is the path of an NKey seed file; "" = none.
	NKeySeedFile string `mapstructure:"nkey_seed_file"`
	// CredsFile is the path of a .creds (JWT) file; "" = none.
	CredsFile string `mapstructure:"creds_file"`
	// TLS configures TLS to the servers.
	TLS TLS `mapstructure:"tls"`
	// ReconnectWait is the first reconnect backoff.
	ReconnectWait time.Duration `mapstructure:"reconnect_wait"`
	// MaxReconnectWait caps the reconnect backoff.
	MaxReconnectWait time.Duration `mapstructure:"max_reconnect_wait"`
}

// TLS configures a TLS client. Empty paths mean "not set".
type TLS struct {
	// CAFile is a PEM bundle verifying the server; "" = system roots.
	CAFile string `mapstructure:"ca_file"`
	// CertFile is the PEM client certificate (with KeyFile) for mutual TLS.
	CertFile string `mapstructure:"cert_file"`
	// KeyFile is the PEM private key of CertFile.
	KeyFile string `mapstructure:"key_file"`
	// InsecureSkipVerify disables server verification; for tests only.
	InsecureSkipVerify bool `mapstructure:"insecure_skip_verify"`
}

// AMQP configures the connection to RabbitMQ (AMQP 0.9.1).
type AMQP struct {
	// URL is the amqp:// or amqps:// broker URL. Secret (may hold a
	// password): never log it.
	URL string `mapstructure:"url"`
	// Exchange is the exchange channels are published to and bound from.
	Exchange string `mapstructure:"exchange"`
	// ExchangeType is the exchange type; only "topic".
	ExchangeType string `mapstructure:"exchange_type"`
	// DeclareExchange declares the exchange at start-up; false = it must exist.
	DeclareExchange bool `mapstructure:"declare_exchange"`
	// Prefetch is the basic.qos prefetch count, 1-65535.
	Prefetch int `mapstructure:"prefetch"`
	// QueueMaxLength bounds the node's queue on the server; 0: unbounded.
	QueueMaxLength int `mapstructure:"queue_max_length"`
	// ReconnectWait is the first reconnect backoff.
	ReconnectWait time.Duration `mapstructure:"reconnect_wait"`
	// MaxReconnectWait caps the reconnect backoff.
	MaxReconnectWait time.Duration `mapstructure:"max_reconnect_wait"`
}

// Session holds the per-session limits and timers, for every transport.
type Session struct {
	// QueueBytes bounds the outgoing queue; overflow applies the channel's
	// slow-consumer policy.
	QueueBytes int `mapstructure:"queue_bytes"`
	// MaxFrameBytes is the largest frame a client may send.
	MaxFrameBytes int `mapstructure:"max_frame_bytes"`
	// MaxSubscriptions bounds the channels one session subscribes to.
	MaxSubscriptions int `mapstructure:"max_subscriptions"`
	// Heartbeat is the interval of heartbeats on idle sessions.
	Heartbeat time.Duration `mapstructure:"heartbeat"`
	// WriteTimeout is the longest write before the session is closed.
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	// DisconnectDelay closes a polling session with no attached request.
	DisconnectDelay time.Duration `mapstructure:"disconnect_delay"`
	// StreamLimitBytes recycles XHR-streaming and htmlfile responses.
	StreamLimitBytes int `mapstructure:"stream_limit_bytes"`
	// SendBatch is the most session writes a write worker makes in one
	// system call (io_uring, Linux); 1 makes each with its own sendto.
	SendBatch int `mapstructure:"send_batch"`
}

// WebSocket configures what the packet WebSockets (/ws and the SockJS
// websocket) negotiate with browsers.
type WebSocket struct {
	// Compression offers permessage-deflate (RFC 7692).
	Compression bool `mapstructure:"compression"`
	// CompressionThreshold is the size in bytes of the smallest message
	// body compressed; smaller ones go uncompressed.
	CompressionThreshold int `mapstructure:"compression_threshold"`
}

// TransportCompression returns the websocket section as transports
// takes it.
func (w WebSocket) TransportCompression() transports.Compression {
	return transports.Compression{Off: !w.Compression, Threshold: w.CompressionThreshold}
}

// Limits are the rate limits on what clients do: per session (frames and
// publishes) and on new sessions (per client address and per node). Each
// is a token bucket: a rate per second and a burst above it; a rate of 0
// is unlimited. The concurrent sessions per address are
// HTTP.MaxSessionsPerIP.
type Limits struct {
	// FramesPerSecond and FrameBurst limit the frames one session sends.
	FramesPerSecond int `mapstructure:"frames_per_second"`
	FrameBurst      int `mapstructure:"frame_burst"`
	// PublishesPerSecond and PublishBurst limit its pub frames.
	PublishesPerSecond int `mapstructure:"publishes_per_second"`
	PublishBurst       int `mapstructure:"publish_burst"`
	// NewSessionsPerIPPerSecond and NewSessionsPerIPBurst limit the
	// sessions one client address (IPv4 address, IPv6 /64) opens.
	NewSessionsPerIPPerSecond int `mapstructure:"new_sessions_per_ip_per_second"`
	NewSessionsPerIPBurst     int `mapstructure:"new_sessions_per_ip_burst"`
	// NewSessionsPerSecond and NewSessionsBurst limit the sessions the
	// node opens, whoever asks.
	NewSessionsPerSecond int `mapstructure:"new_sessions_per_second"`
	NewSessionsBurst     int `mapstructure:"new_sessions_burst"`
	// MaxSessions bounds the sessions the node holds; 0 = unlimited.
	MaxSessions int `mapstructure:"max_sessions"`
}

// Channel is one channel namespace. Config.Channels is ordered: the first
// entry whose Pattern matches a channel applies; no match means denied.
type Channel struct {
	// Pattern is a NATS-style pattern: dot-separated tokens, "*" matches one
	// token, a final ">" matches one or more.
	Pattern string `mapstructure:"pattern"`
	// Subscribe is PermissionAnyone, PermissionNobody or PermissionToken
	// (browser subscribe).
	Subscribe string `mapstructure:"subscribe"`
	// Publish is PermissionAnyone, PermissionNobody or PermissionToken
	// (browser publish).
	Publish string `mapstructure:"publish"`
	// SlowConsumer is one of the SlowConsumer* constants.
	SlowConsumer string `mapstructure:"slow_consumer"`
	// History is one of the History* constants; EffectiveHistory
	// resolves HistoryAuto.
	History string `mapstructure:"history"`
	// HistoryStream names the JetStream stream or RabbitMQ stream queue
	// that stores the namespace; "" derives one from Pattern.
	HistoryStream string `mapstructure:"history_stream"`
	// HistoryMaxAge is how long stored messages are kept; 0 = no age limit.
	HistoryMaxAge time.Duration `mapstructure:"history_max_age"`
	// HistoryMaxBytes bounds the stored messages in bytes; 0 = no limit.
	HistoryMaxBytes int `mapstructure:"history_max_bytes"`
	// HistoryReplicas is the JetStream stream's replica count; 0 = 1 when
	// created, else left as the stream has it.
	HistoryReplicas int `mapstructure:"history_replicas"`
}

// EffectiveHistory is the history the namespace has with a broker of
// kind brokerKind: History, with HistoryAuto resolved.
func (ch *Channel) EffectiveHistory(brokerKind string) string {
	if ch.History != HistoryAuto {
		return ch.History
	}
	if brokerKind == BrokerEmbedded {
		return HistoryJetStream
	}
	return HistoryNone
}

// SockJS is one SockJS endpoint (protocol 0.3), for pages that use the
// sockjs-client library.
type SockJS struct {
	// Prefix is the URL path the endpoint is served under, e.g. "/sockjs".
	Prefix string `mapstructure:"prefix"`
	// Mode is what the endpoint carries: SockJSPubSub, SockJSEcho,
	// SockJSTCP or SockJSClose.
	Mode string `mapstructure:"mode"`
	// Target names the TCP target (tcp mode only).
	Target string `mapstructure:"target"`
	// Websocket offers the websocket transport.
	Websocket bool `mapstructure:"websocket"`
	// CookieNeeded sets the JSESSIONID cookie for sticky load balancers.
	CookieNeeded bool `mapstructure:"cookie_needed"`
	// ResponseLimit recycles streaming responses after this many bytes.
	ResponseLimit int `mapstructure:"response_limit"`
	// HeartbeatDelay is the interval of "h" frames.
	HeartbeatDelay time.Duration `mapstructure:"heartbeat_delay"`
	// DisconnectDelay closes a session with no request attached.
	DisconnectDelay time.Duration `mapstructure:"disconnect_delay"`
	// ClientURL is the sockjs-client script iframe.html loads; "" = the
	// pinned release on a public CDN, with its integrity hash.
	ClientURL string `mapstructure:"client_url"`
	// ClientIntegrity is the Subresource Integrity of ClientURL ("" =
	// none).
	ClientIntegrity string `mapstructure:"client_integrity"`
	// CloseCode and CloseReason are what a close endpoint closes every
	// new session with (0 and "" = 1000 "Normal closure").
	CloseCode   int    `mapstructure:"close_code"`
	CloseReason string `mapstructure:"close_reason"`
}

// Bridge configures the TCP bridge: browser sessions that carry a byte
// stream to a TCP server named here.
type Bridge struct {
	// DialTimeout bounds connecting to a target.
	DialTimeout time.Duration `mapstructure:"dial_timeout"`
	// Targets are the servers browsers may reach, by name; none = no bridge.
	Targets []BridgeTarget `mapstructure:"targets"`
}

// BridgeTarget is one TCP server reachable through the bridge.
type BridgeTarget struct {
	// Name is what the browser asks for: 1 to 64 of [A-Za-z0-9_.-].
	Name string `mapstructure:"name"`
	// Address is host:port; a host name is resolved at every connect.
	Address string `mapstructure:"address"`
	// AllowNetworks are CIDR prefixes this target may reach although the
	// bridge refuses them by default (loopback, private, link-local, ...).
	AllowNetworks []string `mapstructure:"allow_networks"`
	// MaxConnections bounds the node's open connections to the target;
	// 0 = no bound.
	MaxConnections int `mapstructure:"max_connections"`
	// Access is PermissionAnyone (any page from an allowed Origin) or
	// PermissionToken (sessions whose token grants the target by name).
	Access string `mapstructure:"access"`
	// MaxMessageBytes is the largest WebSocket message the bridge takes
	// for this target (over it: close 1009).
	MaxMessageBytes int `mapstructure:"max_message_bytes"`
	// Subprotocols are WebSocket subprotocols of the target's clients the
	// bridge may answer, besides binary and base64 (e.g. v12.stomp).
	Subprotocols []string `mapstructure:"subprotocols"`
}

// Log configures structured logging.
type Log struct {
	// Level is LogDebug, LogInfo, LogWarn or LogError.
	Level string `mapstructure:"level"`
	// Format is LogText or LogJSON.
	Format string `mapstructure:"format"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Enabled serves /metrics on the main listener.
	Enabled bool `mapstructure:"enabled"`
}

// Admin configures the operator listener.
type Admin struct {
	// Listen is the host:port serving /debug/pprof; "" = off.
	Listen string `mapstructure:"listen"`
}

// listDefaults are, per list, the values of keys an entry may leave out.
var listDefaults = map[string]map[string]any{
	"channels": channelDefaults,
	"sockjs":   sockjsDefaults,
	"bridge.targets": {"allow_networks": []string{}, "max_connections": 0, "access": PermissionAnyone,
		"max_message_bytes": transports.DefaultBridgeMaxMessage, "subprotocols": []string{}},
	"auth.keys": {"algorithm": "", "hmac_secret": "", "public_key_file": ""},
}

// sockjsDefaults are the values of keys a sockjs entry in a config file may
// leave out; prefix is required.
var sockjsDefaults = map[string]any{
	"mode":             SockJSPubSub,
	"target":           "",
	"websocket":        true,
	"cookie_needed":    false,
	"response_limit":   128 << 10,
	"heartbeat_delay":  25 * time.Second,
	"disconnect_delay": 5 * time.Second,
	"client_url":       "",
	"client_integrity": "",
	"close_code":       0,
	"close_reason":     "",
}

// channelDefaults are the values of keys a channels entry in a config file
// may leave out. The other Channel keys are required.
var channelDefaults = map[string]any{
	"slow_consumer":     SlowConsumerDisconnect,
	"history":           HistoryNone,
	"history_stream":    "",
	"history_max_age":   24 * time.Hour,
	"history_max_bytes": 256 << 20,
	"history_replicas":  0,
}

// Load returns the configuration: the embedded cometgate.yaml, then the YAML
// file at path merged over it (if path is not ""), then the COMETGATE_
// variables found in environ (os.Environ format; the process environment
// is not read). The result has passed Validate. Every error names the key,
// file or variable at fault; several problems are reported together.
func Load(path string, environ []string) (*Config, error) {
	v := viper.New()

	defaults, err := parseYAML(reference, "embedded cometgate.yaml")
	if err != nil {
		return nil, err
	}
	if err := v.MergeConfigMap(defaults); err != nil {
		return nil, fmt.Errorf("configs: embedded cometgate.yaml: %w", err)
	}

	var errs []error
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("configs: read config file: %w", err)
		}
		file, err := parseYAML(data, path)
		if err != nil {
			errs = append(errs, err)
		} else if err := v.MergeConfigMap(file); err != nil {
			errs = append(errs, fmt.Errorf("configs: %s: %w", path, err))
		}
	}

	overrides, err := parseEnv(environ)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, key := range slices.Sorted(maps.Keys(overrides)) {
		v.Set(key, overrides[key])
	}

	c := new(Config)
	if err := v.Unmarshal(c, strictDecoding); err != nil {
		// parseYAML and parseEnv already produced the right types, so this
		// is a bug in this package, not in the operator's input.
		return nil, fmt.Errorf("configs: decode: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// strictDecoding makes viper's decoder refuse anything that does not map
// one to one onto Config. Values arrive already typed, so no weak typing or
// decode hooks are wanted.
func strictDecoding(dc *mapstructure.DecoderConfig) {
	dc.ErrorUnused = true
	dc.ErrorUnset = true
	dc.WeaklyTypedInput = false
	dc.DecodeHook = nil
}

var durationType = reflect.TypeFor[time.Duration]()

// parseYAML parses a YAML document and checks it against Config: every key
// known, every value of the right type. It returns the document as nested
// map[string]any holding typed values (string, bool, int, time.Duration,
// []string, []any of maps for channels), ready for viper. Null sections are
// dropped (they keep their defaults); null lists become empty lists. src
// names the document in errors.
func parseYAML(data []byte, src string) (map[string]any, error) {
	var raw any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("configs: %s: %w", src, err)
	}
	if raw == nil { // empty document
		return map[string]any{}, nil
	}
	p := &yamlParser{src: src}
	out := p.section("", raw, reflect.TypeFor[Config]())
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	return out, nil
}

type yamlParser struct {
	src  string
	errs []error
}

func (p *yamlParser) fail(path, format string, args ...any) {
	if path == "" {
		path = "top level"
	}
	p.errs = append(p.errs, fmt.Errorf("configs: %s: %s (in %s)", path, fmt.Sprintf(format, args...), p.src))
}

// section checks a mapping against struct type t.
func (p *yamlParser) section(path string, raw any, t reflect.Type) map[string]any {
	m, ok := asMap(raw)
	if !ok {
		p.fail(path, "must be a mapping of keys, got %s", describe(raw))
		return nil
	}
	fields := fieldsByKey(t)
	out := make(map[string]any, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		full := joinPath(path, k)
		f, ok := fields[k]
		if !ok {
			hint := ""
			if _, ok := fields[strings.ToLower(k)]; ok {
				hint = " (keys are lower case)"
			}
			p.errs = append(p.errs, fmt.Errorf("configs: unknown key %q in %s%s", full, p.src, hint))
			continue
		}
		val := m[k]
		if val == nil {
			switch {
			case f.Type.Kind() == reflect.Struct:
				// An empty section (children commented out) keeps its defaults.
			case f.Type.Kind() == reflect.Slice:
				out[k] = p.emptyList(f.Type)
			default:
				p.fail(full, "has no value: write a value or remove the key to keep the default")
			}
			continue
		}
		if v, ok := p.value(full, val, f.Type); ok {
			out[k] = v
		}
	}
	return out
}

func (p *yamlParser) emptyList(t reflect.Type) any {
	if t.Elem().Kind() == reflect.Struct {
		return []any{}
	}
	return []string{}
}

// value checks one value against type t and returns it converted.
func (p *yamlParser) value(path string, raw any, t reflect.Type) (any, bool) {
	switch {
	case t == durationType:
		s, ok := raw.(string)
		if !ok {
			p.fail(path, `must be a Go duration string such as "25s" or "250ms", got %s`, describe(raw))
			return nil, false
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			p.fail(path, `must be a Go duration such as "25s" or "250ms", got %q`, s)
			return nil, false
		}
		return d, true
	case t.Kind() == reflect.String:
		s, ok := raw.(string)
		if !ok {
			p.fail(path, "must be a string, got %s (quote it)", describe(raw))
			return nil, false
		}
		return s, true
	case t.Kind() == reflect.Bool:
		b, ok := raw.(bool)
		if !ok {
			p.fail(path, "must be true or false, got %s", describe(raw))
			return nil, false
		}
		return b, true
	case t.Kind() == reflect.Int:
		n, ok := asInt(raw)
		if !ok {
			p.fail(path, "must be an integer, got %s", describe(raw))
			return nil, false
		}
		return n, true
	case t.Kind() == reflect.Struct:
		m := p.section(path, raw, t)
		return m, m != nil
	case t.Kind() == reflect.Slice:
		list, ok := raw.([]any)
		if !ok {
			p.fail(path, "must be a list, got %s", describe(raw))
			return nil, false
		}
		if t.Elem().Kind() == reflect.Struct {
			return p.structList(path, list, t.Elem())
		}
		out := make([]string, 0, len(list))
		good := true
		for i, item := range list {
			s, ok := item.(string)
			if !ok {
				p.fail(fmt.Sprintf("%s[%d]", path, i), "must be a string, got %s", describe(item))
				good = false
				continue
			}
			out = append(out, s)
		}
		return out, good
	}
	panic(fmt.Sprintf("configs: field %s has unsupported type %s", path, t))
}

// structList checks a list of mappings (channels, sockjs), filling listDefaults
// for omitted keys and reporting other omitted keys.
func (p *yamlParser) structList(path string, list []any, t reflect.Type) (any, bool) {
	out := make([]any, 0, len(list))
	good := true
	for i, item := range list {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		if item == nil {
			p.fail(ipath, "is empty")
			good = false
			continue
		}
		n := len(p.errs)
		m := p.section(ipath, item, t)
		if m == nil || len(p.errs) > n {
			good = false
			continue
		}
		for _, f := range reflect.VisibleFields(t) {
			key := f.Tag.Get("mapstructure")
			if _, ok := m[key]; ok {
				continue
			}
			if def, ok := listDefaults[path][key]; ok {
				m[key] = def
				continue
			}
			p.fail(ipath, "missing key %q", key)
			good = false
		}
		out = append(out, m)
	}
	return out, good
}

func asMap(raw any) (map[string]any, bool) {
	switch m := raw.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, v := range m {
			s, ok := k.(string)
			if !ok {
				s = fmt.Sprint(k) // reported as an unknown key
			}
			out[s] = v
		}
		return out, true
	}
	return nil, false
}

func asInt(raw any) (int, bool) {
	switch n := raw.(type) {
	case int:
		return n, true
	case int64:
		if n >= math.MinInt && n <= math.MaxInt {
			return int(n), true
		}
	case uint64:
		if n <= math.MaxInt {
			return int(n), true
		}
	case float64: // YAML 1e6 or 1.0
		if n == math.Trunc(n) && n >= math.MinInt && n < math.MaxInt {
			return int(n), true
		}
	}
	return 0, false
}

// describe shows a YAML value in an error message.
func describe(raw any) string {
	switch v := raw.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(v)
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(v)
	case []any:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	case time.Time:
		return "a timestamp " + v.Format(time.RFC3339)
	}
	return fmt.Sprintf("a %T", raw)
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldsByKey maps the mapstructure keys of struct type t to its fields.
func fieldsByKey(t reflect.Type) map[string]reflect.StructField {
	out := make(map[string]reflect.StructField, t.NumField())
	for _, f := range reflect.VisibleFields(t) {
		if key := f.Tag.Get("mapstructure"); key != "" {
			out[key] = f
		}
	}
	return out
}

// envKey is a key that an environment variable can set.
type envKey struct {
	path string
	typ  reflect.Type
}

// envKeys maps COMETGATE_ variable names to keys. Built once from Config.
var envKeys = buildEnvKeys()

func buildEnvKeys() map[string]envKey {
	out := map[string]envKey{}
	var walk func(path string, t reflect.Type)
	walk = func(path string, t reflect.Type) {
		for key, f := range fieldsByKey(t) {
			full := joinPath(path, key)
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type != durationType:
				walk(full, f.Type)
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
				// Lists of mappings (channels) are file-only.
			default:
				name := EnvName(full)
				if prev, ok := out[name]; ok {
					panic(fmt.Sprintf("configs: keys %s and %s share the variable %s", prev.path, full, name))
				}
				out[name] = envKey{path: full, typ: f.Type}
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	return out
}

// EnvName returns the environment variable that overrides key, e.g.
// EnvName("http.listen") == "COMETGATE_HTTP_LISTEN".
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// parseEnv returns the key overrides found in environ, typed. Every
// variable with EnvPrefix must name a key. When a variable appears twice,
// the last one wins (as with exec.Cmd.Env).
func parseEnv(environ []string) (map[string]any, error) {
	out := map[string]any{}
	var errs []error
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		key, ok := envKeys[name]
		if !ok {
			errs = append(errs, unknownEnv(name))
			continue
		}
		v, err := fromEnv(value, key.typ)
		if err != nil {
			errs = append(errs, fmt.Errorf("configs: %s: %w", name, err))
			continue
		}
		out[key.path] = v
	}
	return out, errors.Join(errs...)
}

func unknownEnv(name string) error {
	for _, list := range slices.Sorted(maps.Keys(listDefaults)) {
		if v := EnvName(list); name == v || strings.HasPrefix(name, v+"_") {
			return fmt.Errorf("configs: %s: %s cannot be set from the environment; list them in the config file", name, list)
		}
	}
	if _, ok := envKeys[strings.ToUpper(name)]; ok {
		return fmt.Errorf("configs: unknown environment variable %s (variable names are upper case)", name)
	}
	return fmt.Errorf("configs: unknown environment variable %s: no such key (see cometgate.yaml)", name)
}

// fromEnv converts an environment value to the type of its key. Lists are
// comma-separated with spaces around items trimmed; "" is the empty list.
func fromEnv(s string, t reflect.Type) (any, error) {
	switch {
	case t == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf(`must be a Go duration such as "25s" or "250ms", got %q`, s)
		}
		return d, nil
	case t.Kind() == reflect.String:
		return s, nil
	case t.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("must be true or false, got %q", s)
		}
		return b, nil
	case t.Kind() == reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("must be an integer, got %q", s)
		}
		return n, nil
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		if s == "" {
			return []string{}, nil
		}
		items := strings.Split(s, ",")
		for i := range items {
			items[i] = strings.TrimSpace(items[i])
		}
		return items, nil
	}
	panic(fmt.Sprintf("configs: no environment syntax for type %s", t))
}
