package configs

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// writeConfig writes a YAML config file in a temporary directory and
// returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cometgate.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantDefaults is cometgate.yaml written out by hand: a change of a default
// must be deliberate.
func wantDefaults() *Config {
	return &Config{
		Node: Node{ID: "", AdvertiseURL: "", PeerNetworks: []string{}},
		HTTP: HTTP{
			Listen:            "127.0.0.1:8080",
			ReadHeaderTimeout: 5 * time.Second,
			ReadBodyTimeout:   10 * time.Second,
			IdleTimeout:       120 * time.Second,
			ShutdownTimeout:   10 * time.Second,
			AllowedOrigins:    []string{},
			AllowedHosts:      []string{},
			TrustedProxies:    []string{},
			MaxSessionsPerIP:  0,
		},
		API: API{Keys: []string{}, AllowLoopback: true, MaxBodyBytes: 1 << 20},
		Auth: Auth{Mode: AuthNone, Leeway: 30 * time.Second, RevocationTTL: 24 * time.Hour, Keys: []AuthKey{},
			JWKS:    AuthJWKS{Refresh: 10 * time.Minute, MinRefetch: 30 * time.Second, MaxAge: 24 * time.Hour, Timeout: 5 * time.Second},
			Webhook: AuthWebhookConfig{Headers: []string{}, Timeout: 2 * time.Second, CacheTTL: 30 * time.Second}},
		Broker: Broker{
			Kind:           BrokerEmbedded,
			SubjectPrefix:  "",
			PublishTimeout: 5 * time.Second,
			DedupeWindow:   2 * time.Minute,
			DedupeMax:      10000,
			Embedded:       Embedded{Listen: "", StoreDir: ""},
			NATS: NATS{
				URLs:             []string{"nats://127.0.0.1:4222"},
				Name:             "cometgate",
				ReconnectWait:    time.Second,
				MaxReconnectWait: 30 * time.Second,
			},
			AMQP: AMQP{
				URL:              "amqp://guest:guest@127.0.0.1:5672/",
				Exchange:         "cometgate",
				ExchangeType:     "topic",
				DeclareExchange:  true,
				Prefetch:         256,
				ReconnectWait:    time.Second,
				MaxReconnectWait: 30 * time.Second,
			},
		},
		Session: Session{
			QueueBytes:       1 << 20,
			MaxFrameBytes:    64 << 10,
			MaxSubscriptions: 128,
			Heartbeat:        25 * time.Second,
			WriteTimeout:     10 * time.Second,
			DisconnectDelay:  5 * time.Second,
			StreamLimitBytes: 128 << 10,
			SendBatch:        64,
		},
		WebSocket: WebSocket{Compression: true, CompressionThreshold: 256},
		Limits: Limits{
			FramesPerSecond:           200,
			FrameBurst:                1000,
			PublishesPerSecond:        50,
			PublishBurst:              200,
			NewSessionsPerIPPerSecond: 0,
			NewSessionsPerIPBurst:     100,
			NewSessionsPerSecond:      1000,
			NewSessionsBurst:          2000,
			MaxSessions:               0,
		},
		Channels: []Channel{{
			Pattern:         "demo.>",
			Subscribe:       PermissionAnyone,
			Publish:         PermissionAnyone,
			SlowConsumer:    SlowConsumerDisconnect,
			History:         HistoryNone,
			HistoryMaxAge:   24 * time.Hour,
			HistoryMaxBytes: 256 << 20,
		}, {
			Pattern: "ticker.>", Subscribe: PermissionAnyone, Publish: PermissionNobody,
			SlowConsumer: SlowConsumerConflate, History: HistoryNone,
			HistoryMaxAge: 24 * time.Hour, HistoryMaxBytes: 256 << 20,
		}, {
			Pattern: "auction.bids", Subscribe: PermissionNobody, Publish: PermissionAnyone,
			SlowConsumer: SlowConsumerDisconnect, History: HistoryNone,
			HistoryMaxAge: 24 * time.Hour, HistoryMaxBytes: 256 << 20,
		}, {
			Pattern: "auction.>", Subscribe: PermissionAnyone, Publish: PermissionNobody,
			SlowConsumer: SlowConsumerDisconnect, History: HistoryAuto,
			HistoryMaxAge: time.Hour, HistoryMaxBytes: 64 << 20,
		}, {
			Pattern: "election.>", Subscribe: PermissionAnyone, Publish: PermissionNobody,
			SlowConsumer: SlowConsumerDisconnect, History: HistoryAuto,
			HistoryMaxAge: time.Hour, HistoryMaxBytes: 64 << 20,
		}},
		SockJS: []SockJS{
			{Prefix: "/sockjs", Mode: SockJSPubSub, Websocket: true, ResponseLimit: 128 << 10,
				HeartbeatDelay: 25 * time.Second, DisconnectDelay: 5 * time.Second},
			{Prefix: "/sockjs-echo", Mode: SockJSEcho, Websocket: true, ResponseLimit: 128 << 10,
				HeartbeatDelay: 25 * time.Second, DisconnectDelay: 5 * time.Second},
		},
		Bridge:  Bridge{DialTimeout: 5 * time.Second, Targets: []BridgeTarget{}},
		Log:     Log{Level: LogInfo, Format: LogText},
		Metrics: Metrics{Enabled: true},
		Admin:   Admin{Listen: ""},
		Demo:    Demo{Enabled: DemoAuto},
	}
}

// defaults returns the embedded defaults, Load("", nil).
func defaults(t *testing.T) *Config {
	t.Helper()
	c, err := Load("", nil)
	if err != nil {
		t.Fatalf("the embedded cometgate.yaml does not load: %v", err)
	}
	return c
}

func TestDefaults(t *testing.T) {
	got, err := Load("", nil)
	if err != nil {
		t.Fatalf("the embedded cometgate.yaml does not load: %v", err)
	}
	if want := wantDefaults(); !reflect.DeepEqual(got, want) {
		t.Errorf("Load(\"\", nil) =\n%+v\nwant\n%+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate() on the defaults: %v", err)
	}
	// Every call returns a fresh value: callers may modify theirs.
	a, b := defaults(t), defaults(t)
	a.API.Keys = append(a.API.Keys, "x")
	a.Channels[0].Pattern = "changed"
	if len(b.API.Keys) != 0 || b.Channels[0].Pattern != "demo.>" {
		t.Error(`Load("", nil) values share memory`)
	}
	if !bytes.Equal(Reference(), reference) {
		t.Error("Reference() differs from the embedded file")
	}
	onDisk, err := os.ReadFile("cometgate.yaml")
	if err != nil || !bytes.Equal(onDisk, reference) {
		t.Errorf("embedded reference differs from cometgate.yaml on disk (err %v)", err)
	}
}

// TestReferenceDocumentsEveryField keeps cometgate.yaml and Config in step:
// every field has a key in the file, with a comment line right above it.
// (The reverse, every key in the file is a field, is enforced by Load.)
func TestReferenceDocumentsEveryField(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal(reference, &doc); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(reference), "\n")
	var check func(path string, node *yaml.Node, typ reflect.Type)
	check = func(path string, node *yaml.Node, typ reflect.Type) {
		if node.Kind != yaml.MappingNode {
			t.Errorf("%s: not a mapping in cometgate.yaml", path)
			return
		}
		for key, f := range fieldsByKey(typ) {
			full := joinPath(path, key)
			var k, v *yaml.Node
			for i := 0; i+1 < len(node.Content); i += 2 {
				if node.Content[i].Value == key {
					k, v = node.Content[i], node.Content[i+1]
				}
			}
			if k == nil {
				t.Errorf("field %s (%s) is missing from cometgate.yaml", full, f.Name)
				continue
			}
			above := strings.TrimSpace(lines[k.Line-2])
			if !strings.HasPrefix(above, "#") && !strings.HasPrefix(above, "- #") {
				// A list item's first key sits on the "- " line; the
				// comment is above that line too.
				t.Errorf("%s (cometgate.yaml line %d) has no comment line above it", full, k.Line)
			}
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type != durationType:
				check(full, v, f.Type)
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
				if v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
					// An empty default list (bridge.targets: deny by
					// default) documents its entry in the comment above.
					var block []string
					for i := k.Line - 2; i >= 0 && strings.HasPrefix(strings.TrimSpace(lines[i]), "#"); i-- {
						block = append(block, lines[i])
					}
					for ek := range fieldsByKey(f.Type.Elem()) {
						if !strings.Contains(strings.Join(block, "\n"), ek+":") {
							t.Errorf("%s: the comment above the empty list needs an example entry with %q", full, ek)
						}
					}
					continue
				}
				if v.Kind != yaml.SequenceNode {
					t.Errorf("%s: cometgate.yaml needs an example entry to document its keys", full)
					continue
				}
				check(full+"[0]", v.Content[0], f.Type.Elem())
			}
		}
	}
	check("", doc.Content[0], reflect.TypeFor[Config]())
}

func TestEnvNames(t *testing.T) {
	for key, want := range map[string]string{
		"http.listen":                  "COMETGATE_HTTP_LISTEN",
		"broker.kind":                  "COMETGATE_BROKER_KIND",
		"api.keys":                     "COMETGATE_API_KEYS",
		"broker.nats.tls.ca_file":      "COMETGATE_BROKER_NATS_TLS_CA_FILE",
		"session.max_frame_bytes":      "COMETGATE_SESSION_MAX_FRAME_BYTES",
		"broker.amqp.declare_exchange": "COMETGATE_BROKER_AMQP_DECLARE_EXCHANGE",
	} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", key, got, want)
		}
		if k, ok := envKeys[want]; !ok || k.path != key {
			t.Errorf("envKeys[%q] = %+v, %v; want key %q", want, k, ok, key)
		}
	}
	// Every scalar and string-list field has exactly one variable.
	leaves := 0
	var count func(reflect.Type)
	count = func(typ reflect.Type) {
		for _, f := range fieldsByKey(typ) {
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type != durationType:
				count(f.Type)
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			default:
				leaves++
			}
		}
	}
	count(reflect.TypeFor[Config]())
	if len(envKeys) != leaves {
		t.Errorf("%d environment variables for %d keys", len(envKeys), leaves)
	}
}

func TestLoadFile(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func(*Config) // edits the defaults into the expected result
	}{
		{
			name: "empty file",
			yaml: "",
			want: func(*Config) {},
		},
		{
			name: "only comments",
			yaml: "# nothing here\n",
			want: func(*Config) {},
		},
		{
			name: "scalars merge key by key",
			yaml: "http:\n  listen: 0.0.0.0:9000\nsession:\n  heartbeat: 1m\n  queue_bytes: 8192\n",
			want: func(c *Config) {
				c.HTTP.Listen = "0.0.0.0:9000"
				c.Session.Heartbeat = time.Minute
				c.Session.QueueBytes = 8192
			},
		},
		{
			name: "deep nesting",
			yaml: "broker:\n  kind: nats\n  nats:\n    tls:\n      ca_file: /etc/ca.pem\n      insecure_skip_verify: true\n",
			want: func(c *Config) {
				c.Broker.Kind = BrokerNATS
				c.Broker.NATS.TLS.CAFile = "/etc/ca.pem"
				c.Broker.NATS.TLS.InsecureSkipVerify = true
			},
		},
		{
			name: "lists are replaced, not merged",
			yaml: "broker:\n  nats:\n    urls: [nats://a:4222, nats://b:4222]\nhttp:\n  allowed_origins:\n    - https://example.com\n",
			want: func(c *Config) {
				c.Broker.NATS.URLs = []string{"nats://a:4222", "nats://b:4222"}
				c.HTTP.AllowedOrigins = []string{"https://example.com"}
			},
		},
		{
			name: "channels replace the defaults; omitted optional keys get defaults",
			yaml: `
channels:
  - pattern: ticker.*
    subscribe: anyone
    publish: nobody
    slow_consumer: conflate
    history: jetstream
  - pattern: auction.>
    subscribe: nobody
    publish: anyone
`,
			want: func(c *Config) {
				c.Channels = []Channel{
					{Pattern: "ticker.*", Subscribe: "anyone", Publish: "nobody", SlowConsumer: "conflate", History: "jetstream", HistoryMaxAge: 24 * time.Hour, HistoryMaxBytes: 256 << 20},
					{Pattern: "auction.>", Subscribe: "nobody", Publish: "anyone", SlowConsumer: "disconnect", History: "none", HistoryMaxAge: 24 * time.Hour, HistoryMaxBytes: 256 << 20},
				}
			},
		},
		{
			name: "empty channels list denies everything",
			yaml: "channels: []\n",
			want: func(c *Config) { c.Channels = []Channel{} },
		},
		{
			name: "null list is an empty list",
			yaml: "channels:\nbroker:\n  nats:\n    urls:\n",
			want: func(c *Config) {
				c.Channels = []Channel{}
				c.Broker.NATS.URLs = []string{}
			},
		},
		{
			name: "null section keeps its defaults",
			yaml: "http:\n  # listen: 1.2.3.4:5\nlog:\n  level: debug\n",
			want: func(c *Config) { c.Log.Level = LogDebug },
		},
		{
			name: "integers written as floats",
			yaml: "api:\n  max_body_bytes: 2e6\n",
			want: func(c *Config) { c.API.MaxBodyBytes = 2_000_000 },
		},
		{
			name: "quoted values",
			yaml: "node:\n  id: \"n1\"\nbroker:\n  subject_prefix: 'cg.'\n",
			want: func(c *Config) {
				c.Node.ID = "n1"
				c.Broker.SubjectPrefix = "cg."
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Load(writeConfig(t, tt.yaml), nil)
			if err != nil {
				t.Fatal(err)
			}
			want := wantDefaults()
			tt.want(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestLoadEnv(t *testing.T) {
	file := writeConfig(t, "http:\n  listen: 0.0.0.0:1111\napi:\n  keys: [fromfile]\n")
	tests := []struct {
		name string
		path string
		env  []string
		want func(*Config)
	}{
		{
			name: "unrelated variables are ignored",
			env:  []string{"PATH=/bin", "HOME=/root", "cometgate_http_listen=x", "COMETGATEHTTP=x", "NOEQUALS"},
			want: func(*Config) {},
		},
		{
			name: "scalar",
			env:  []string{"COMETGATE_HTTP_LISTEN=127.0.0.1:9000", "COMETGATE_BROKER_KIND=nats"},
			want: func(c *Config) {
				c.HTTP.Listen = "127.0.0.1:9000"
				c.Broker.Kind = BrokerNATS
			},
		},
		{
			name: "value containing =",
			env:  []string{"COMETGATE_BROKER_NATS_TOKEN=a=b=="},
			want: func(c *Config) { c.Broker.NATS.Token = "a=b==" },
		},
		{
			name: "list, comma-separated, spaces trimmed",
			env:  []string{"COMETGATE_API_KEYS=k1, k2 ,k3", "COMETGATE_HTTP_ALLOWED_ORIGINS=https://a.example,http://localhost:3000"},
			want: func(c *Config) {
				c.API.Keys = []string{"k1", "k2", "k3"}
				c.HTTP.AllowedOrigins = []string{"https://a.example", "http://localhost:3000"}
			},
		},
		{
			name: "single-item and empty list",
			env:  []string{"COMETGATE_API_KEYS=only", "COMETGATE_BROKER_NATS_URLS="},
			want: func(c *Config) {
				c.API.Keys = []string{"only"}
				c.Broker.NATS.URLs = []string{}
			},
		},
		{
			name: "duration, int, bool",
			env: []string{
				"COMETGATE_SESSION_HEARTBEAT=30s", "COMETGATE_HTTP_SHUTDOWN_TIMEOUT=1m30s",
				"COMETGATE_SESSION_QUEUE_BYTES=65536", "COMETGATE_API_ALLOW_LOOPBACK=false",
				"COMETGATE_METRICS_ENABLED=0",
			},
			want: func(c *Config) {
				c.Session.Heartbeat = 30 * time.Second
				c.HTTP.ShutdownTimeout = 90 * time.Second
				c.Session.QueueBytes = 65536
				c.API.AllowLoopback = false
				c.Metrics.Enabled = false
			},
		},
		{
			name: "deeply nested key whose names hold underscores",
			env:  []string{"COMETGATE_BROKER_NATS_TLS_INSECURE_SKIP_VERIFY=true", "COMETGATE_BROKER_EMBEDDED_STORE_DIR=/var/lib/cg"},
			want: func(c *Config) {
				c.Broker.NATS.TLS.InsecureSkipVerify = true
				c.Broker.Embedded.StoreDir = "/var/lib/cg"
			},
		},
		{
			name: "empty string clears a string",
			env:  []string{"COMETGATE_BROKER_NATS_NAME="},
			want: func(c *Config) { c.Broker.NATS.Name = "" },
		},
		{
			name: "last occurrence wins",
			env:  []string{"COMETGATE_LOG_LEVEL=debug", "COMETGATE_LOG_LEVEL=warn"},
			want: func(c *Config) { c.Log.Level = LogWarn },
		},
		{
			name: "environment wins over the file",
			path: file,
			env:  []string{"COMETGATE_API_KEYS=fromenv"},
			want: func(c *Config) {
				c.HTTP.Listen = "0.0.0.0:1111"
				c.API.Keys = []string{"fromenv"}
			},
		},
		{
			name: "file applies where the environment is silent",
			path: file,
			env:  []string{"COMETGATE_LOG_FORMAT=json"},
			want: func(c *Config) {
				c.HTTP.Listen = "0.0.0.0:1111"
				c.API.Keys = []string{"fromfile"}
				c.Log.Format = LogJSON
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Load(tt.path, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			want := wantDefaults()
			tt.want(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string // "" = no file
		env  []string
		want []string // substrings of the error; "$FILE" stands for the path
	}{
		{
			name: "unknown key",
			yaml: "http:\n  lisen: 1.2.3.4:80\n",
			want: []string{`configs: unknown key "http.lisen" in $FILE`},
		},
		{
			name: "unknown section",
			yaml: "htttp:\n  listen: x\n",
			want: []string{`unknown key "htttp" in $FILE`},
		},
		{
			name: "unknown key below a known leaf",
			yaml: "node:\n  id:\n    x: 1\n",
			want: []string{`node.id: must be a string, got a mapping`},
		},
		{
			name: "unknown key in a channel entry",
			yaml: "channels:\n  - pattern: a\n    subscribe: anyone\n    publish: anyone\n    histroy: none\n",
			want: []string{`unknown key "channels[0].histroy" in $FILE`},
		},
		{
			name: "keys are case-sensitive",
			yaml: "HTTP:\n  listen: x\n",
			want: []string{`unknown key "HTTP" in $FILE (keys are lower case)`},
		},
		{
			name: "all unknown keys reported together",
			yaml: "a: 1\nb: 2\n",
			want: []string{`unknown key "a"`, `unknown key "b"`},
		},
		{
			name: "duration given as a number",
			yaml: "session:\n  heartbeat: 25\n",
			want: []string{`configs: session.heartbeat: must be a Go duration string such as "25s" or "250ms", got 25 (in $FILE)`},
		},
		{
			name: "bad duration",
			yaml: "session:\n  write_timeout: 10 seconds\n",
			want: []string{`session.write_timeout: must be a Go duration such as "25s" or "250ms", got "10 seconds"`},
		},
		{
			name: "int given as a string",
			yaml: "session:\n  queue_bytes: 1MB\n",
			want: []string{`session.queue_bytes: must be an integer, got "1MB"`},
		},
		{
			name: "fractional int",
			yaml: "session:\n  max_subscriptions: 1.5\n",
			want: []string{`session.max_subscriptions: must be an integer, got 1.5`},
		},
		{
			name: "bool given as yes",
			yaml: "api:\n  allow_loopback: yes\n",
			want: []string{`api.allow_loopback: must be true or false, got "yes"`},
		},
		{
			name: "string given as a number",
			yaml: "broker:\n  nats:\n    password: 12345\n",
			want: []string{`broker.nats.password: must be a string, got 12345 (quote it)`},
		},
		{
			name: "section given as a scalar",
			yaml: "http: 8080\n",
			want: []string{`http: must be a mapping of keys, got 8080`},
		},
		{
			name: "list given as a scalar",
			yaml: "api:\n  keys: k1,k2\n",
			want: []string{`api.keys: must be a list, got "k1,k2"`},
		},
		{
			name: "list item of the wrong type",
			yaml: "api:\n  keys: [ok, 5]\n",
			want: []string{`api.keys[1]: must be a string, got 5`},
		},
		{
			name: "null scalar",
			yaml: "http:\n  listen:\n",
			want: []string{`http.listen: has no value`},
		},
		{
			name: "channel entry missing a permission",
			yaml: "channels:\n  - pattern: a.b\n    publish: nobody\n",
			want: []string{`channels[0]: missing key "subscribe" (in $FILE)`},
		},
		{
			name: "channel entry not a mapping",
			yaml: "channels:\n  - a.b\n",
			want: []string{`channels[0]: must be a mapping of keys, got "a.b"`},
		},
		{
			name: "top level not a mapping",
			yaml: "- a\n- b\n",
			want: []string{`top level: must be a mapping of keys, got a list`},
		},
		{
			name: "malformed YAML",
			yaml: "http:\n  listen: [\n",
			want: []string{`configs: $FILE: yaml:`},
		},
		{
			name: "duplicate key",
			yaml: "log:\n  level: info\n  level: debug\n",
			want: []string{`configs: $FILE: yaml:`, `already defined`},
		},
		{
			name: "unknown environment variable",
			env:  []string{"COMETGATE_HTTP_LISEN=1.2.3.4:80"},
			want: []string{`configs: unknown environment variable COMETGATE_HTTP_LISEN: no such key`},
		},
		{
			name: "environment variable for a section",
			env:  []string{"COMETGATE_HTTP=x"},
			want: []string{`unknown environment variable COMETGATE_HTTP:`},
		},
		{
			name: "environment variable in the wrong case",
			env:  []string{"COMETGATE_http_listen=x"},
			want: []string{`unknown environment variable COMETGATE_http_listen (variable names are upper case)`},
		},
		{
			name: "channels from the environment",
			env:  []string{"COMETGATE_CHANNELS=demo.>"},
			want: []string{`configs: COMETGATE_CHANNELS: channels cannot be set from the environment`},
		},
		{
			name: "channel keys from the environment",
			env:  []string{"COMETGATE_CHANNELS_0_PATTERN=demo.>"},
			want: []string{`COMETGATE_CHANNELS_0_PATTERN: channels cannot be set from the environment`},
		},
		{
			name: "environment duration",
			env:  []string{"COMETGATE_SESSION_HEARTBEAT=25"},
			want: []string{`configs: COMETGATE_SESSION_HEARTBEAT: must be a Go duration such as "25s" or "250ms", got "25"`},
		},
		{
			name: "environment int",
			env:  []string{"COMETGATE_SESSION_QUEUE_BYTES=1MB"},
			want: []string{`configs: COMETGATE_SESSION_QUEUE_BYTES: must be an integer, got "1MB"`},
		},
		{
			name: "environment bool",
			env:  []string{"COMETGATE_METRICS_ENABLED=yes"},
			want: []string{`configs: COMETGATE_METRICS_ENABLED: must be true or false, got "yes"`},
		},
		{
			name: "file and environment problems reported together",
			yaml: "nope: 1\n",
			env:  []string{"COMETGATE_NOPE=1"},
			want: []string{`unknown key "nope"`, `unknown environment variable COMETGATE_NOPE`},
		},
		{
			name: "environment value fails validation",
			env:  []string{"COMETGATE_SESSION_QUEUE_BYTES=12"},
			want: []string{`configs: session.queue_bytes: must be at least 4096, got 12`},
		},
		{
			name: "file value fails validation",
			yaml: "broker:\n  kind: kafka\n",
			want: []string{`configs: broker.kind: must be one of embedded | nats | amqp, got "kafka"`},
		},
		{
			name: "empty list entry from the environment",
			env:  []string{"COMETGATE_API_KEYS=k1,"},
			want: []string{`configs: api.keys[1]: must not be empty`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.yaml != "" {
				path = writeConfig(t, tt.yaml)
			}
			c, err := Load(path, tt.env)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", c)
			}
			if c != nil {
				t.Error("Load returned a config with an error")
			}
			for _, want := range tt.want {
				want = strings.ReplaceAll(want, "$FILE", path)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, want)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.yaml")
	_, err := Load(path, nil)
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load(missing) = %v; want an error naming %s that is fs.ErrNotExist", err, path)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // "" = valid
	}{
		{"node.id set", func(c *Config) { c.Node.ID = "n01" }, ""},
		{"node.id 16 chars", func(c *Config) { c.Node.ID = "abcdefghij012345" }, ""},
		{"node.id too long", func(c *Config) { c.Node.ID = "abcdefghij0123456" }, `node.id: must be 1 to 16 characters of [a-z0-9], got "abcdefghij0123456"`},
		{"node.id upper case", func(c *Config) { c.Node.ID = "N1" }, `node.id: must be 1 to 16`},
		{"node.id dot", func(c *Config) { c.Node.ID = "a.b" }, `node.id: must be 1 to 16`},
		{"node.advertise_url ip", func(c *Config) { c.Node.AdvertiseURL = "http://10.0.0.5:8080" }, ""},
		{"node.advertise_url https name", func(c *Config) { c.Node.AdvertiseURL = "https://node1.example.com" }, ""},
		{"node.advertise_url ipv6", func(c *Config) { c.Node.AdvertiseURL = "http://[fd00::5]:8080" }, ""},
		{"node.advertise_url no scheme", func(c *Config) { c.Node.AdvertiseURL = "10.0.0.5:8080" }, `node.advertise_url: must be http(s)://host[:port]`},
		{"node.advertise_url ftp", func(c *Config) { c.Node.AdvertiseURL = "ftp://10.0.0.5" }, `node.advertise_url: must be http(s)://host[:port]`},
		{"node.advertise_url path", func(c *Config) { c.Node.AdvertiseURL = "http://10.0.0.5:8080/gw" }, `node.advertise_url: must be http(s)://host[:port] with nothing after the host`},
		{"node.advertise_url trailing slash", func(c *Config) { c.Node.AdvertiseURL = "http://10.0.0.5:8080/" }, `node.advertise_url: must be http(s)://host[:port]`},
		{"node.advertise_url user", func(c *Config) { c.Node.AdvertiseURL = "http://u:p@10.0.0.5" }, `node.advertise_url: must be http(s)://host[:port]`},
		{"node.advertise_url unspecified", func(c *Config) { c.Node.AdvertiseURL = "http://0.0.0.0:8080" }, `node.advertise_url: host must be an address other nodes can connect to, not "0.0.0.0"`},
		{"node.advertise_url bad port", func(c *Config) { c.Node.AdvertiseURL = "http://10.0.0.5:0" }, `node.advertise_url: port must be a number 1-65535`},
		{"node.advertise_url bad host", func(c *Config) { c.Node.AdvertiseURL = "http://a_b:80" }, `node.advertise_url: host must be a DNS name or IP address`},

		{"http.listen all interfaces", func(c *Config) { c.HTTP.Listen = ":8080" }, ""},
		{"http.listen ipv6", func(c *Config) { c.HTTP.Listen = "[::1]:0" }, ""},
		{"http.listen no port", func(c *Config) { c.HTTP.Listen = "localhost" }, `http.listen: must be host:port such as "127.0.0.1:8080" or ":8080", got "localhost"`},
		{"http.listen empty", func(c *Config) { c.HTTP.Listen = "" }, `http.listen: must be host:port`},
		{"http.listen empty port", func(c *Config) { c.HTTP.Listen = "127.0.0.1:" }, `http.listen: port must be a number 0-65535`},
		{"http.listen big port", func(c *Config) { c.HTTP.Listen = ":65536" }, `http.listen: port must be a number 0-65535, got ":65536"`},
		{"http.read_header_timeout", func(c *Config) { c.HTTP.ReadHeaderTimeout = 0 }, `http.read_header_timeout: must be greater than 0, got 0s`},
		{"http.read_body_timeout", func(c *Config) { c.HTTP.ReadBodyTimeout = 0 }, `http.read_body_timeout: must be greater than 0, got 0s`},
		{"http.idle_timeout", func(c *Config) { c.HTTP.IdleTimeout = -time.Second }, `http.idle_timeout: must be greater than 0, got -1s`},
		{"http.shutdown_timeout", func(c *Config) { c.HTTP.ShutdownTimeout = 0 }, `http.shutdown_timeout: must be greater than 0`},
		{"origins valid", func(c *Config) {
			c.HTTP.AllowedOrigins = []string{"*", "https://example.com", "http://localhost:3000", "https://[::1]:8443"}
		}, ""},
		{"origin with path", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://example.com/app"} }, `http.allowed_origins[0]: must be "*" or scheme://host[:port]`},
		{"host with port", func(c *Config) { c.HTTP.AllowedHosts = []string{"example.com:8080"} }, `http.allowed_hosts[0]: must be "*", a DNS name or an IP address (no port, no scheme)`},
		{"host with scheme", func(c *Config) { c.HTTP.AllowedHosts = []string{"*", "https://example.com"} }, `http.allowed_hosts[1]: must be "*", a DNS name`},
		{"proxy not an address", func(c *Config) { c.HTTP.TrustedProxies = []string{"proxy.local"} }, `http.trusted_proxies[0]: must be an IP address or a CIDR prefix`},
		{"limits unlimited", func(c *Config) { c.Limits = Limits{} }, ""},
		{"limits negative rate", func(c *Config) { c.Limits.FramesPerSecond = -1 }, `limits.frames_per_second: must be at least 0, got -1`},
		{"limits no burst", func(c *Config) { c.Limits.PublishBurst = 0 }, `limits.publish_burst: must be at least 1, got 0`},
		{"limits ip burst", func(c *Config) { c.Limits.NewSessionsPerIPPerSecond, c.Limits.NewSessionsPerIPBurst = 20, -3 }, `limits.new_sessions_per_ip_burst: must be at least 1, got -3`},
		{"limits node rate", func(c *Config) { c.Limits.NewSessionsPerSecond = -1 }, `limits.new_sessions_per_second: must be at least 0`},
		{"limits max sessions", func(c *Config) { c.Limits.MaxSessions = -1 }, `limits.max_sessions: must be at least 0, got -1`},
		{"limits node burst without rate", func(c *Config) { c.Limits.NewSessionsPerSecond, c.Limits.NewSessionsBurst = 0, 0 }, ""},
		{"short cluster key", func(c *Config) { c.Node.ClusterKey = "short" }, `node.cluster_key: must be at least 32 bytes`},
		{"peer network", func(c *Config) { c.Node.PeerNetworks = []string{"10.0.0.0/8", "lan"} }, `node.peer_networks[1]: must be an IP address or a CIDR prefix`},
		{"embedded user without password", func(c *Config) { c.Broker.Embedded.User = "u" }, `broker.embedded: user and password go together`},
		{"embedded user and token", func(c *Config) {
			c.Broker.Embedded.User, c.Broker.Embedded.Password, c.Broker.Embedded.Token = "u", "p", "t"
		}, `broker.embedded: set either user and password or token`},
		{"proxy bad prefix", func(c *Config) { c.HTTP.TrustedProxies = []string{"10.0.0.0/33"} }, `http.trusted_proxies[0]: must be an IP address or a CIDR prefix`},
		{"origin trailing slash", func(c *Config) { c.HTTP.AllowedOrigins = []string{"*", "https://example.com/"} }, `http.allowed_origins[1]: must be "*" or scheme://host[:port]`},
		{"origin scheme", func(c *Config) { c.HTTP.AllowedOrigins = []string{"ftp://example.com"} }, `http.allowed_origins[0]: must be "*"`},
		{"origin no scheme", func(c *Config) { c.HTTP.AllowedOrigins = []string{"example.com"} }, `http.allowed_origins[0]: must be "*"`},
		{"origin wildcard host", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://*.example.com"} }, `http.allowed_origins[0]: host must be a DNS name or IP address (no wildcards)`},
		{"origin bad host", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://-x.example.com"} }, `http.allowed_origins[0]: host must be a DNS name`},
		{"origin query", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://example.com?x"} }, `http.allowed_origins[0]: must be "*"`},
		{"origin userinfo", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://u@example.com"} }, `http.allowed_origins[0]: must be "*"`},
		{"origin empty port", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://example.com:"} }, `http.allowed_origins[0]: must be "*"`},
		{"origin upper case", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://Example.com"} }, `http.allowed_origins[0]: must be lower case`},
		{"origin default port", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://example.com:443"} }, `http.allowed_origins[0]: must not name the default port`},
		{"origin bad port", func(c *Config) { c.HTTP.AllowedOrigins = []string{"http://example.com:0"} }, `http.allowed_origins[0]: port must be a number 1-65535`},
		{"max_sessions_per_ip", func(c *Config) { c.HTTP.MaxSessionsPerIP = -1 }, `http.max_sessions_per_ip: must be at least 0, got -1`},

		{"api.keys empty entry", func(c *Config) { c.API.Keys = []string{"secret", ""} }, `api.keys[1]: must not be empty`},
		{"api.max_body_bytes", func(c *Config) { c.API.MaxBodyBytes = 0 }, `api.max_body_bytes: must be at least 1, got 0`},

		{"auth.mode", func(c *Config) { c.Auth.Mode = "JWT" }, `auth.mode: must be one of none | jwt | webhook, got "JWT"`},
		{"auth jwt hmac", func(c *Config) { c.Auth.Mode, c.Auth.HMACSecret = AuthJWT, strings.Repeat("k", 32) }, ""},
		{"auth jwt public key", func(c *Config) { c.Auth.Mode, c.Auth.PublicKeyFile = AuthJWT, "key.pem" }, ""},
		{"auth jwt no key", func(c *Config) { c.Auth.Mode = AuthJWT }, `auth: mode jwt needs hmac_secret, public_key_file, keys or jwks.url`},
		{"auth jwt both keys", func(c *Config) {
			c.Auth.Mode, c.Auth.HMACSecret, c.Auth.PublicKeyFile = AuthJWT, strings.Repeat("k", 32), "key.pem"
		}, `auth: set either hmac_secret or public_key_file, not both`},
		{"auth short secret", func(c *Config) { c.Auth.Mode, c.Auth.HMACSecret = AuthJWT, strings.Repeat("k", 31) }, `auth.hmac_secret: must be at least 32 bytes, got 31`},
		{"auth keys", func(c *Config) {
			c.Auth.Mode = AuthJWT
			c.Auth.Keys = []AuthKey{{ID: "a", HMACSecret: strings.Repeat("k", 32)}, {ID: "b", PublicKeyFile: "b.pem", Algorithm: "RS256"}}
		}, ""},
		{"auth keys without id", func(c *Config) {
			c.Auth.Mode, c.Auth.Keys = AuthJWT, []AuthKey{{HMACSecret: strings.Repeat("k", 32)}}
		}, `auth.keys[0].id: is required`},
		{"auth keys twice", func(c *Config) {
			c.Auth.Mode, c.Auth.Keys = AuthJWT, []AuthKey{{ID: "a", PublicKeyFile: "a.pem"}, {ID: "a", PublicKeyFile: "b.pem"}}
		}, `auth.keys[1].id: "a" is listed twice`},
		{"auth key with both", func(c *Config) {
			c.Auth.Mode, c.Auth.Keys = AuthJWT, []AuthKey{{ID: "a", PublicKeyFile: "a.pem", HMACSecret: strings.Repeat("k", 32)}}
		}, `auth.keys[0]: set exactly one of hmac_secret and public_key_file`},
		{"auth key short secret", func(c *Config) {
			c.Auth.Mode, c.Auth.Keys = AuthJWT, []AuthKey{{ID: "a", HMACSecret: "short"}}
		}, `auth.keys[0].hmac_secret: must be at least 32 bytes, got 5`},
		{"auth key algorithm", func(c *Config) {
			c.Auth.Mode, c.Auth.Keys = AuthJWT, []AuthKey{{ID: "a", PublicKeyFile: "a.pem", Algorithm: "none"}}
		}, `auth.keys[0].algorithm: must be one of HS256`},
		{"auth keys and a single key", func(c *Config) {
			c.Auth.Mode, c.Auth.HMACSecret = AuthJWT, strings.Repeat("k", 32)
			c.Auth.Keys = []AuthKey{{ID: "a", PublicKeyFile: "a.pem"}}
		}, `auth: set hmac_secret or public_key_file, or keys, not both`},
		{"auth jwks", func(c *Config) {
			c.Auth.Mode, c.Auth.JWKS.URL = AuthJWT, "https://id.example.com/.well-known/jwks.json"
		}, ""},
		{"auth jwks loopback http", func(c *Config) { c.Auth.Mode, c.Auth.JWKS.URL = AuthJWT, "http://127.0.0.1:9000/jwks" }, ""},
		{"auth jwks http", func(c *Config) { c.Auth.Mode, c.Auth.JWKS.URL = AuthJWT, "http://id.example.com/jwks" },
			`auth.jwks.url: must be https (http only to a loopback address), got "http://id.example.com/jwks"`},
		{"auth jwks relative", func(c *Config) { c.Auth.Mode, c.Auth.JWKS.URL = AuthJWT, "/jwks" }, `auth.jwks.url: must be an absolute URL`},
		{"auth jwks refresh", func(c *Config) {
			c.Auth.Mode, c.Auth.JWKS.URL, c.Auth.JWKS.Refresh = AuthJWT, "https://id.example.com/jwks", 0
		}, `auth.jwks.refresh: must be greater than 0`},
		{"auth webhook", func(c *Config) {
			c.Auth.Mode, c.Auth.Webhook.URL, c.Auth.Webhook.Headers = AuthWebhook, "https://app.example.com/cometgate-auth", []string{"Authorization"}
			c.Channels[0].Subscribe, c.Auth.Required = PermissionToken, true
		}, ""},
		{"auth webhook no url", func(c *Config) { c.Auth.Mode = AuthWebhook }, `auth.webhook.url: mode webhook needs the application's URL`},
		{"auth webhook http", func(c *Config) { c.Auth.Mode, c.Auth.Webhook.URL = AuthWebhook, "http://app.example.com/auth" }, `auth.webhook.url: must be https`},
		{"auth webhook header", func(c *Config) {
			c.Auth.Mode, c.Auth.Webhook.URL, c.Auth.Webhook.Headers = AuthWebhook, "https://app.example.com/auth", []string{"Host"}
		}, `auth.webhook.headers[0]: must be a header name (not Host), got "Host"`},
		{"auth webhook cache", func(c *Config) {
			c.Auth.Mode, c.Auth.Webhook.URL, c.Auth.Webhook.CacheTTL = AuthWebhook, "https://app.example.com/auth", 0
		}, `auth.webhook.cache_ttl: must be greater than 0`},
		{"auth secret unused when none", func(c *Config) { c.Auth.HMACSecret = "short" }, ""},
		{"auth leeway zero", func(c *Config) { c.Auth.Leeway = 0 }, ""},
		{"auth leeway negative", func(c *Config) { c.Auth.Leeway = -time.Second }, `auth.leeway: must not be negative, got -1s`},
		{"auth revocation ttl zero", func(c *Config) { c.Auth.RevocationTTL = 0 }, `auth.revocation_ttl: must be greater than 0, got 0s`},
		{"auth required without jwt", func(c *Config) { c.Auth.Required = true }, `auth.required: true needs auth.mode jwt or webhook`},
		{"auth required with jwt", func(c *Config) {
			c.Auth.Mode, c.Auth.HMACSecret, c.Auth.Required = AuthJWT, strings.Repeat("k", 32), true
		}, ""},
		{"subscribe token without jwt", func(c *Config) { c.Channels[0].Subscribe = PermissionToken }, `channels[0].subscribe: token needs auth.mode jwt or webhook, got auth.mode "none"`},
		{"publish token without jwt", func(c *Config) { c.Channels[0].Publish = PermissionToken }, `channels[0].publish: token needs auth.mode jwt`},
		{"token with jwt", func(c *Config) {
			c.Auth.Mode, c.Auth.HMACSecret = AuthJWT, strings.Repeat("k", 32)
			c.Channels[0].Subscribe, c.Channels[0].Publish = PermissionToken, PermissionToken
		}, ""},

		{"broker.kind", func(c *Config) { c.Broker.Kind = "NATS" }, `broker.kind: must be one of embedded | nats | amqp, got "NATS"`},
		{"subject_prefix valid", func(c *Config) { c.Broker.SubjectPrefix = "app-1.cg_x." }, ""},
		{"subject_prefix no dot", func(c *Config) { c.Broker.SubjectPrefix = "cg" }, `broker.subject_prefix: must be "" or dot-terminated tokens`},
		{"subject_prefix wildcard", func(c *Config) { c.Broker.SubjectPrefix = "cg.*." }, `broker.subject_prefix: must be ""`},
		{"subject_prefix double dot", func(c *Config) { c.Broker.SubjectPrefix = "cg..x." }, `broker.subject_prefix: must be ""`},
		{"publish_timeout", func(c *Config) { c.Broker.PublishTimeout = 0 }, `broker.publish_timeout: must be greater than 0`},
		{"embedded.listen valid", func(c *Config) { c.Broker.Embedded.Listen = "127.0.0.1:4223" }, ""},
		{"embedded.listen bad", func(c *Config) { c.Broker.Embedded.Listen = "4223" }, `broker.embedded.listen: must be host:port`},

		{"nats without urls", func(c *Config) { c.Broker.Kind = BrokerNATS; c.Broker.NATS.URLs = nil }, `broker.nats.urls: must list at least one server URL when broker.kind is nats`},
		{"nats urls unused when embedded", func(c *Config) { c.Broker.NATS.URLs = nil }, ""},
		{"nats empty url", func(c *Config) { c.Broker.NATS.URLs = []string{"nats://a:4222", " "} }, `broker.nats.urls[1]: must not be empty`},
		{"nats password without user", func(c *Config) { c.Broker.NATS.Password = "p" }, `broker.nats.password: requires broker.nats.user`},
		{"nats user and password", func(c *Config) { c.Broker.NATS.User = "u"; c.Broker.NATS.Password = "p" }, ""},
		{"nats two auth methods", func(c *Config) { c.Broker.NATS.Token = "t"; c.Broker.NATS.CredsFile = "x.creds" }, `broker.nats: set only one authentication method, got token and creds_file`},
		{"nats tls cert without key", func(c *Config) { c.Broker.NATS.TLS.CertFile = "c.pem" }, `broker.nats.tls: cert_file and key_file must be set together`},
		{"nats reconnect_wait", func(c *Config) { c.Broker.NATS.ReconnectWait = 0 }, `broker.nats.reconnect_wait: must be greater than 0`},
		{"nats max_reconnect_wait", func(c *Config) { c.Broker.NATS.MaxReconnectWait = time.Millisecond }, `broker.nats.max_reconnect_wait: must be at least reconnect_wait (1s), got 1ms`},

		{"amqp without url", func(c *Config) { c.Broker.Kind = BrokerAMQP; c.Broker.AMQP.URL = "" }, `broker.amqp.url: must be set when broker.kind is amqp`},
		{"amqp url unused when embedded", func(c *Config) { c.Broker.AMQP.URL = "" }, ""},
		{"amqp url scheme", func(c *Config) { c.Broker.AMQP.URL = "http://u:secret@h/" }, `broker.amqp.url: must be an amqp:// or amqps:// URL with a host`},
		{"amqps url", func(c *Config) { c.Broker.AMQP.URL = "amqps://u:p@rabbit:5671/vhost" }, ""},
		{"amqp exchange", func(c *Config) { c.Broker.AMQP.Exchange = "" }, `broker.amqp.exchange: must not be empty`},
		{"amqp exchange_type", func(c *Config) { c.Broker.AMQP.ExchangeType = "fanout" }, `broker.amqp.exchange_type: must be one of topic, got "fanout"`},
		{"amqp prefetch 0", func(c *Config) { c.Broker.AMQP.Prefetch = 0 }, `broker.amqp.prefetch: must be between 1 and 65535, got 0`},
		{"amqp prefetch big", func(c *Config) { c.Broker.AMQP.Prefetch = 65536 }, `broker.amqp.prefetch: must be between 1 and 65535, got 65536`},
		{"amqp queue max length negative", func(c *Config) { c.Broker.AMQP.QueueMaxLength = -1 }, `broker.amqp.queue_max_length: must not be negative, got -1`},
		{"amqp reconnect_wait", func(c *Config) { c.Broker.AMQP.ReconnectWait = -1 }, `broker.amqp.reconnect_wait: must be greater than 0`},
		{"amqp max_reconnect_wait", func(c *Config) { c.Broker.AMQP.MaxReconnectWait = 0 }, `broker.amqp.max_reconnect_wait: must be at least reconnect_wait`},

		{"session.queue_bytes", func(c *Config) { c.Session.QueueBytes = 12 }, `configs: session.queue_bytes: must be at least 4096, got 12`},
		{"session.queue_bytes minimum", func(c *Config) { c.Session.QueueBytes = 4096 }, ""},
		{"session.max_frame_bytes", func(c *Config) { c.Session.MaxFrameBytes = 255 }, `session.max_frame_bytes: must be at least 256, got 255`},
		{"session.max_subscriptions", func(c *Config) { c.Session.MaxSubscriptions = 0 }, `session.max_subscriptions: must be at least 1, got 0`},
		{"websocket.compression_threshold", func(c *Config) { c.WebSocket.CompressionThreshold = 0 }, `websocket.compression_threshold: must be at least 1, got 0`},
		{"websocket.compression off", func(c *Config) { c.WebSocket.Compression = false }, ""},
		{"session.heartbeat", func(c *Config) { c.Session.Heartbeat = 999 * time.Millisecond }, `session.heartbeat: must be at least 1s, got 999ms`},
		{"session.write_timeout", func(c *Config) { c.Session.WriteTimeout = 0 }, `session.write_timeout: must be greater than 0`},
		{"session.disconnect_delay", func(c *Config) { c.Session.DisconnectDelay = 0 }, `session.disconnect_delay: must be greater than 0`},
		{"session.send_batch 0", func(c *Config) { c.Session.SendBatch = 0 }, `session.send_batch: must be between 1 and 64, got 0`},
		{"session.send_batch 65", func(c *Config) { c.Session.SendBatch = 65 }, `session.send_batch: must be between 1 and 64, got 65`},
		{"session.send_batch off", func(c *Config) { c.Session.SendBatch = 1 }, ""},

		{"no channels", func(c *Config) { c.Channels = nil }, ""},
		{"patterns valid", func(c *Config) {
			c.Channels = nil
			for _, p := range []string{">", "*", "a", "a.*.c", "a.>", "*.*", "user:1@x=y-z_W.*"} {
				c.Channels = append(c.Channels, Channel{Pattern: p, Subscribe: "anyone", Publish: "nobody", SlowConsumer: "drop_oldest", History: "none"})
			}
		}, ""},
		{"pattern empty", func(c *Config) { c.Channels[0].Pattern = "" }, `channels[0].pattern: must not be empty`},
		{"pattern double dot", func(c *Config) { c.Channels[0].Pattern = "a..b" }, `channels[0].pattern: has an empty token`},
		{"pattern trailing dot", func(c *Config) { c.Channels[0].Pattern = "a." }, `channels[0].pattern: has an empty token`},
		{"pattern > not last", func(c *Config) { c.Channels[0].Pattern = "a.>.b" }, `channels[0].pattern: ">" must be the last token, got "a.>.b"`},
		{"pattern partial wildcard", func(c *Config) { c.Channels[0].Pattern = "a.b*" }, `channels[0].pattern: token "b*" is not`},
		{"pattern space", func(c *Config) { c.Channels[0].Pattern = "a b" }, `channels[0].pattern: token "a b" is not`},
		{"pattern too long", func(c *Config) { c.Channels[0].Pattern = strings.Repeat("a", 256) }, `channels[0].pattern: must be at most 255 bytes, got 256`},
		{"pattern 255 bytes", func(c *Config) { c.Channels[0].Pattern = strings.Repeat("a", 255) }, ""},
		{"pattern duplicate", func(c *Config) { c.Channels = append(c.Channels, c.Channels[0]) }, `channels[5].pattern: "demo.>" repeats channels[0].pattern`},
		{"subscribe enum", func(c *Config) { c.Channels[0].Subscribe = "everyone" }, `channels[0].subscribe: must be one of anyone | nobody | token, got "everyone"`},
		{"publish enum", func(c *Config) { c.Channels[0].Publish = "" }, `channels[0].publish: must be one of anyone | nobody | token, got ""`},
		{"slow_consumer enum", func(c *Config) { c.Channels[0].SlowConsumer = "drop" }, `channels[0].slow_consumer: must be one of disconnect | drop_oldest | conflate, got "drop"`},
		{"history enum", func(c *Config) { c.Channels[0].History = "all" }, `channels[0].history: must be one of none | jetstream | stream | auto, got "all"`},
		{"history jetstream on amqp", func(c *Config) { c.Broker.Kind = BrokerAMQP; c.Channels[0].History = HistoryJetStream }, `channels[0].history: jetstream needs broker.kind embedded or nats`},
		{"history jetstream on nats", func(c *Config) { c.Broker.Kind = BrokerNATS; c.Channels[0].History = HistoryJetStream }, ""},
		{"history stream on embedded", func(c *Config) { c.Channels[0].History = HistoryStream }, `channels[0].history: stream (a RabbitMQ stream queue) needs broker.kind amqp, not embedded`},
		{"history stream on amqp", func(c *Config) { c.Broker.Kind = BrokerAMQP; c.Channels[0].History = HistoryStream }, ""},
		{"history auto on amqp", func(c *Config) { c.Broker.Kind = BrokerAMQP; c.Channels[0].History = HistoryAuto }, ""},
		{"demo enabled on", func(c *Config) { c.Demo.Enabled = DemoOn }, ""},
		{"demo enabled off", func(c *Config) { c.Demo.Enabled = DemoOff }, ""},
		{"demo enabled enum", func(c *Config) { c.Demo.Enabled = "yes" }, `demo.enabled: must be one of auto | on | off, got "yes"`},
		{"history max age negative", func(c *Config) { c.Channels[0].HistoryMaxAge = -time.Second }, `channels[0].history_max_age: must not be negative`},
		{"history max bytes negative", func(c *Config) { c.Channels[0].HistoryMaxBytes = -1 }, `channels[0].history_max_bytes: must not be negative`},
		{"history stream name", func(c *Config) { c.Channels[0].HistoryStream = "a.b" }, `channels[0].history_stream: must be 1 to 64 characters`},
		{"sockjs prefix", func(c *Config) { c.SockJS[0].Prefix = "sockjs/" }, `sockjs[0].prefix: must be a path like "/sockjs"`},
		{"sockjs prefix repeated", func(c *Config) { c.SockJS[1].Prefix = "/sockjs" }, `sockjs[1].prefix: "/sockjs" repeats sockjs[0].prefix`},
		{"sockjs mode", func(c *Config) { c.SockJS[0].Mode = "raw" }, `sockjs[0].mode: must be one of pubsub | echo | tcp`},
		{"sockjs tcp target", func(c *Config) { c.SockJS[0].Mode, c.SockJS[0].Target = SockJSTCP, "db" }, `sockjs[0].target: must name one of bridge.targets, got "db"`},
		{"sockjs target outside tcp", func(c *Config) { c.SockJS[0].Target = "db" }, `sockjs[0].target: only a tcp endpoint has a target`},
		{"bridge dial timeout", func(c *Config) { c.Bridge.DialTimeout = 0 }, `bridge.dial_timeout: must be greater than 0`},
		{"bridge target name", func(c *Config) { c.Bridge.Targets = []BridgeTarget{{Name: "a b", Address: "x:1"}} }, `bridge.targets[0].name: must be 1 to 64 characters`},
		{"bridge target repeated", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1"}, {Name: "a", Address: "y:2"}}
		}, `bridge.targets[1].name: "a" repeats bridge.targets[0].name`},
		{"bridge target address", func(c *Config) { c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x"}} }, `bridge.targets[0].address: must be host:port`},
		{"bridge target port", func(c *Config) { c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:0"}} }, `bridge.targets[0].address: must be host:port with a port 1-65535, got "x:0"`},
		{"bridge access", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", Access: "friends"}}
		}, `bridge.targets[0].access: must be one of anyone | token`},
		{"bridge access token without jwt", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", Access: PermissionToken}}
		}, `bridge.targets[0].access: token needs auth.mode jwt or webhook, not none`},
		{"bridge max connections", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", MaxConnections: -1}}
		}, `bridge.targets[0].max_connections: must be 0 (no bound) or more, got -1`},
		{"bridge allow networks", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", AllowNetworks: []string{"10.0.0.1"}}}
		}, `bridge.targets[0].allow_networks[0]: must be a CIDR prefix`},
		{"bridge max message bytes", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", Access: PermissionAnyone, MaxMessageBytes: 1000}}
		}, `bridge: bridge target a: max_message_bytes: must be 0 (the default, 1048576) or 65536 to 67108864, got 1000`},
		{"bridge subprotocol not a token", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", Access: PermissionAnyone, Subprotocols: []string{"v1 stomp"}}}
		}, `bridge: bridge target a: subprotocols: "v1 stomp" is not a token`},
		{"bridge subprotocol of the bridge", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", Access: PermissionAnyone, Subprotocols: []string{"base64"}}}
		}, `bridge: bridge target a: subprotocols: "base64" is the bridge's own`},
		{"bridge subprotocols", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "a", Address: "x:1", Access: PermissionAnyone, MaxMessageBytes: 256 << 10,
				Subprotocols: []string{"v10.stomp", "v11.stomp", "v12.stomp"}}}
		}, ""},
		{"sockjs response limit", func(c *Config) { c.SockJS[0].ResponseLimit = 10 }, `sockjs[0].response_limit: must be at least 4096`},
		{"sockjs prefix the node serves", func(c *Config) { c.SockJS[0].Prefix = "/ws" }, `sockjs: sockjs prefix "/ws": /ws is served by the node itself`},
		{"sockjs prefixes nested", func(c *Config) { c.SockJS[1].Prefix = "/sockjs/echo" }, `sockjs: sockjs /sockjs/echo: prefix overlaps the endpoint at /sockjs`},
		{"sockjs client_url", func(c *Config) { c.SockJS[0].ClientURL = "ftp://cdn/x.js" }, `sockjs: sockjs /sockjs: client_url:`},
		{"sockjs tcp endpoint", func(c *Config) {
			c.Bridge.Targets = []BridgeTarget{{Name: "db", Address: "db.internal:5432", Access: PermissionAnyone}}
			c.SockJS[0].Mode, c.SockJS[0].Target = SockJSTCP, "db"
		}, ""},
		{"sockjs heartbeat", func(c *Config) { c.SockJS[0].HeartbeatDelay = time.Millisecond }, `sockjs[0].heartbeat_delay: must be at least 1s`},

		{"log.level", func(c *Config) { c.Log.Level = "trace" }, `log.level: must be one of debug | info | warn | error, got "trace"`},
		{"log.format", func(c *Config) { c.Log.Format = "logfmt" }, `log.format: must be one of text | json, got "logfmt"`},
		{"admin.listen valid", func(c *Config) { c.Admin.Listen = "127.0.0.1:6060" }, ""},
		{"admin.listen bad", func(c *Config) { c.Admin.Listen = "127.0.0.1:pprof" }, `admin.listen: port must be a number 0-65535`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := defaults(t)
			tt.change(c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want == "":
			case err == nil:
				t.Fatalf("Validate() = nil, want %q", tt.want)
			case !strings.Contains(err.Error(), tt.want):
				t.Fatalf("Validate() = %v\nwant it to contain %q", err, tt.want)
			case !strings.HasPrefix(err.Error(), "configs: "):
				t.Fatalf("Validate() = %v, want the package prefix", err)
			}
		})
	}
}

// TestValidateAllProblems checks that several problems are reported at once
// and that secrets are never echoed.
func TestValidateAllProblems(t *testing.T) {
	c := defaults(t)
	c.Session.QueueBytes = 1
	c.Log.Level = "loud"
	c.Broker.AMQP.URL = "http://user:hunter2@host/"
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	for _, want := range []string{"session.queue_bytes", "log.level", "broker.amqp.url"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q echoes a secret", err)
	}
}

// TestLoadBridgeTargets: bridge targets from a file, with the optional
// keys left out on one, and a SockJS tcp endpoint naming one.
func TestLoadBridgeTargets(t *testing.T) {
	path := writeConfig(t, `
bridge:
  dial_timeout: 2s
  targets:
    - name: redis
      address: 127.0.0.1:6379
      allow_networks: [127.0.0.0/8, "::1/128"]
      max_connections: 50
      max_message_bytes: 4194304
      subprotocols: [resp3]
    - name: chat
      address: chat.example.com:6667
sockjs:
  - prefix: /chat
    mode: tcp
    target: chat
`)
	c, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Bridge{DialTimeout: 2 * time.Second, Targets: []BridgeTarget{
		{Name: "redis", Address: "127.0.0.1:6379", AllowNetworks: []string{"127.0.0.0/8", "::1/128"}, MaxConnections: 50, Access: PermissionAnyone,
			MaxMessageBytes: 4 << 20, Subprotocols: []string{"resp3"}},
		{Name: "chat", Address: "chat.example.com:6667", AllowNetworks: []string{}, Access: PermissionAnyone,
			MaxMessageBytes: 1 << 20, Subprotocols: []string{}},
	}}
	if !reflect.DeepEqual(c.Bridge, want) {
		t.Errorf("bridge = %+v\nwant %+v", c.Bridge, want)
	}
	if len(c.SockJS) != 1 || c.SockJS[0].Mode != SockJSTCP || c.SockJS[0].Target != "chat" {
		t.Errorf("sockjs = %+v", c.SockJS)
	}
	if _, err := Load("", []string{"COMETGATE_BRIDGE_TARGETS=x"}); err == nil || !strings.Contains(err.Error(), "bridge.targets cannot be set from the environment") {
		t.Errorf("env: %v", err)
	}
}

// TestLoadAuthKeys: auth.keys from a file.
func TestLoadAuthKeys(t *testing.T) {
	path := writeConfig(t, `
auth:
  mode: jwt
  keys:
    - id: "2026-01"
      public_key_file: /etc/cometgate/2026-01.pem
      algorithm: RS256
    - id: "2026-02"
      hmac_secret: "`+strings.Repeat("k", 32)+`"
`)
	c, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []AuthKey{{ID: "2026-01", PublicKeyFile: "/etc/cometgate/2026-01.pem", Algorithm: "RS256"}, {ID: "2026-02", HMACSecret: strings.Repeat("k", 32)}}
	if !reflect.DeepEqual(c.Auth.Keys, want) {
		t.Errorf("keys = %+v\nwant %+v", c.Auth.Keys, want)
	}
}

// TestLoadAuth: the auth section from a file with the secret from the
// environment, the token permission accepted with it, and errors that
// name their key without echoing the secret.
func TestLoadAuth(t *testing.T) {
	secret := "s3cret-" + strings.Repeat("x", 30)
	path := writeConfig(t, `
auth:
  mode: jwt
  issuer: https://app.example.com
  audience: cometgate
  leeway: 5s
  required: true
channels:
  - pattern: "secret.>"
    subscribe: token
    publish: token
`)
	c, err := Load(path, []string{"COMETGATE_AUTH_HMAC_SECRET=" + secret})
	if err != nil {
		t.Fatal(err)
	}
	want := Auth{Mode: AuthJWT, HMACSecret: secret, Issuer: "https://app.example.com", Audience: "cometgate",
		Leeway: 5 * time.Second, Required: true, RevocationTTL: 24 * time.Hour}
	want.Keys = []AuthKey{}
	want.JWKS = wantDefaults().Auth.JWKS
	want.Webhook = wantDefaults().Auth.Webhook
	if !reflect.DeepEqual(c.Auth, want) {
		t.Errorf("auth = %+v\nwant %+v", c.Auth, want)
	}
	if ch := c.Channels[0]; ch.Subscribe != PermissionToken || ch.Publish != PermissionToken {
		t.Errorf("channel = %+v", ch)
	}

	// Without the secret the same file is refused, naming the section.
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "auth: mode jwt needs hmac_secret, public_key_file, keys or jwks.url") {
		t.Errorf("no secret: %v", err)
	}
	// A short secret is refused without being echoed.
	_, err = Load(path, []string{"COMETGATE_AUTH_HMAC_SECRET=hunter2"})
	if err == nil || !strings.Contains(err.Error(), "auth.hmac_secret: must be at least 32 bytes, got 7") {
		t.Errorf("short secret: %v", err)
	} else if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q echoes the secret", err)
	}
	// The token permission without jwt names the key at fault.
	path = writeConfig(t, `
channels:
  - pattern: "secret.>"
    subscribe: anyone
    publish: token
`)
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), `channels[0].publish: token needs auth.mode jwt`) {
		t.Errorf("token without jwt: %v", err)
	}
	if _, err := Load("", []string{"COMETGATE_AUTH_LEEWAY=soon"}); err == nil || !strings.Contains(err.Error(), "COMETGATE_AUTH_LEEWAY") {
		t.Errorf("bad leeway: %v", err)
	}
}

// TestEffectiveHTTP: the allowed hosts default to the loopback names for a
// loopback listener and to any host otherwise; trusted proxies parse as
// prefixes, an address as its own host prefix.
func TestEffectiveHTTP(t *testing.T) {
	for _, tc := range []struct {
		listen string
		hosts  []string
		want   []string
	}{
		{"127.0.0.1:8080", nil, []string{"localhost", "127.0.0.1", "::1"}},
		{"[::1]:0", nil, []string{"localhost", "127.0.0.1", "::1"}},
		{"localhost:8080", nil, []string{"localhost", "127.0.0.1", "::1"}},
		{"0.0.0.0:8080", nil, nil},
		{":8080", nil, nil},
		{"10.0.0.5:8080", nil, nil},
		{"0.0.0.0:8080", []string{"push.example.com"}, []string{"push.example.com"}},
	} {
		h := HTTP{Listen: tc.listen, AllowedHosts: tc.hosts}
		if got := h.EffectiveAllowedHosts(); !slices.Equal(got, tc.want) {
			t.Errorf("listen %s, allowed_hosts %v: %v, want %v", tc.listen, tc.hosts, got, tc.want)
		}
	}
	h := HTTP{TrustedProxies: []string{"10.0.0.0/8", "192.168.1.7", "::ffff:172.16.0.1", "fd00::/8"}}
	var got []string
	for _, p := range h.TrustedProxyPrefixes() {
		got = append(got, p.String())
	}
	if want := []string{"10.0.0.0/8", "192.168.1.7/32", "172.16.0.1/32", "fd00::/8"}; !slices.Equal(got, want) {
		t.Errorf("trusted proxies %v, want %v", got, want)
	}
}

// TestSockJSCloseMode: a close endpoint's keys reach transports, and
// transports' rules for them apply at load.
func TestSockJSCloseMode(t *testing.T) {
	cfg, err := Load(writeConfig(t, "sockjs:\n  - prefix: /close\n    mode: close\n    close_code: 3000\n    close_reason: Go away!\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	eps := cfg.SockJSEndpoints()
	if len(eps) != 1 || eps[0].Mode != SockJSClose || eps[0].CloseCode != 3000 || eps[0].CloseReason != "Go away!" {
		t.Fatalf("endpoints %+v", eps)
	}
	_, err = Load(writeConfig(t, "sockjs:\n  - prefix: /x\n    mode: pubsub\n    close_code: 3000\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "sockjs") {
		t.Fatalf("close_code on a pubsub endpoint: %v", err)
	}
}

// The demo runs by itself only on the embedded broker, and history auto
// is JetStream there and nothing on an external broker.
func TestDemoAndHistoryAuto(t *testing.T) {
	for _, tc := range []struct {
		enabled, kind string
		runs          bool
		history       string
	}{
		{DemoAuto, BrokerEmbedded, true, HistoryJetStream},
		{DemoAuto, BrokerNATS, false, HistoryNone},
		{DemoAuto, BrokerAMQP, false, HistoryNone},
		{DemoOn, BrokerAMQP, true, HistoryNone},
		{DemoOff, BrokerEmbedded, false, HistoryJetStream},
	} {
		c := defaults(t)
		c.Demo.Enabled, c.Broker.Kind = tc.enabled, tc.kind
		if got := c.DemoRuns(); got != tc.runs {
			t.Errorf("demo.enabled %s with %s: DemoRuns() = %v", tc.enabled, tc.kind, got)
		}
		ch := Channel{History: HistoryAuto}
		if got := ch.EffectiveHistory(tc.kind); got != tc.history {
			t.Errorf("history auto with %s = %q, want %q", tc.kind, got, tc.history)
		}
	}
	if got := (&Channel{History: HistoryStream}).EffectiveHistory(BrokerAMQP); got != HistoryStream {
		t.Errorf("history stream resolved to %q", got)
	}
	env, err := Load("", []string{"COMETGATE_DEMO_ENABLED=off"})
	if err != nil || env.DemoRuns() {
		t.Errorf("COMETGATE_DEMO_ENABLED=off: %v, runs %v", err, err == nil && env.DemoRuns())
	}
}
