package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamSpec declares a JetStream stream that stores the messages of some
// channels, which makes them history-backed (see the package doc).
//
// The stream keeps messages by limits only (age, count, bytes; the oldest
// go first). Per-subject limits (MaxMsgsPerSubject) are deliberately not
// offered, and an existing stream that has them is refused: they remove
// messages from the middle of the stream, which a resuming client could
// not be told about (gaps are detected against the stream's first
// sequence; see Broker.Replay).
type StreamSpec struct {
	// Name is the stream name: letters, digits, '-' and '_'.
	Name string
	// Patterns are the channel patterns whose messages the stream stores,
	// in channel syntax, before Options.SubjectPrefix is applied. At least
	// one. Two StreamSpecs of one Broker must not overlap.
	Patterns []string
	// MaxAge, MaxMsgs and MaxBytes bound what the stream keeps; zero
	// means unlimited. They apply only when the broker creates or updates
	// the stream (Create).
	MaxAge   time.Duration
	MaxMsgs  int64
	MaxBytes int64
	// Replicas is the number of copies in a JetStream cluster. Zero means
	// 1 for a stream the broker creates, and whatever an existing stream
	// has (an operator may have raised it): the broker never lowers it.
	Replicas int
	// Memory keeps the stream in server memory instead of files: faster,
	// but the stream is lost (and recreated empty, with Create) when the
	// server restarts, and its sequences start over. Live subscriptions
	// notice that; a client's cursor cannot (Replay only sees a cursor
	// beyond the new stream's end as a gap), so prefer files for channels
	// where clients resume.
	Memory bool
	// Create makes the broker create the stream, or update it to this
	// spec, on every (re)connect. Without it the stream must already exist
	// (created by an operator) and store every subject of Patterns.
	Create bool
}

// stream is a validated StreamSpec.
type stream struct {
	spec     StreamSpec
	subjects []string // Patterns with the subject prefix applied
}

// newStreams validates specs: names, patterns, limits, and that no two
// streams overlap (the server would refuse that, less clearly).
func newStreams(specs []StreamSpec, subj subjects) ([]stream, error) {
	out := make([]stream, 0, len(specs))
	for i, sp := range specs {
		if err := checkStreamName(sp.Name); err != nil {
			return nil, fmt.Errorf("natsbroker: stream %d: %w", i, err)
		}
		if len(sp.Patterns) == 0 {
			return nil, fmt.Errorf("natsbroker: stream %q has no channel patterns", sp.Name)
		}
		if sp.MaxAge < 0 || sp.MaxMsgs < 0 || sp.MaxBytes < 0 || sp.Replicas < 0 {
			return nil, fmt.Errorf("natsbroker: stream %q: negative limit (zero means unlimited)", sp.Name)
		}
		st := stream{spec: sp}
		for _, p := range sp.Patterns {
			if err := checkPattern(p); err != nil {
				return nil, fmt.Errorf("natsbroker: stream %q: %w", sp.Name, err)
			}
			st.subjects = append(st.subjects, subj.subject(p))
		}
		for _, prev := range out {
			if prev.spec.Name == sp.Name {
				return nil, fmt.Errorf("natsbroker: stream %q is declared twice", sp.Name)
			}
			for _, a := range prev.spec.Patterns {
				for _, b := range sp.Patterns {
					if brokers.PatternsOverlap(a, b) {
						return nil, fmt.Errorf("natsbroker: streams %q and %q overlap (patterns %q and %q)", prev.spec.Name, sp.Name, a, b)
					}
				}
			}
		}
		// Patterns within one stream may overlap; the server does not
		// accept that, so keep only the ones no other one covers.
		st.subjects = dedupeCovered(st.subjects)
		out = append(out, st)
	}
	return out, nil
}

// dedupeCovered drops patterns covered by another one of the list.
func dedupeCovered(ps []string) []string {
	out := make([]string, 0, len(ps))
	for i, p := range ps {
		covered := false
		for j, q := range ps {
			if i == j {
				continue
			}
			// Of two equal patterns keep the first.
			if brokers.PatternCovers(q, p) && (!brokers.PatternCovers(p, q) || j < i) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	return out
}

func checkStreamName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty stream name", errBadName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
		if !ok {
			return fmt.Errorf("%w: stream name %q contains %q (use letters, digits, '-' and '_')", errBadName, name, c)
		}
	}
	return nil
}

// covers reports whether the stream stores every channel of pattern.
func (s *stream) covers(pattern string) bool {
	for _, p := range s.spec.Patterns {
		if brokers.PatternCovers(p, pattern) {
			return true
		}
	}
	return false
}

// config is the stream configuration the broker creates or updates to.
func (s *stream) config() jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:      s.spec.Name,
		Subjects:  s.subjects,
		Retention: jetstream.LimitsPolicy,
		Discard:   jetstream.DiscardOld,
		MaxAge:    s.spec.MaxAge,
		MaxMsgs:   -1,
		MaxBytes:  -1,
		Replicas:  max(1, s.spec.Replicas),
		Storage:   jetstream.FileStorage,
	}
	if s.spec.MaxMsgs > 0 {
		cfg.MaxMsgs = s.spec.MaxMsgs
	}
	if s.spec.MaxBytes > 0 {
		cfg.MaxBytes = s.spec.MaxBytes
	}
	if s.spec.Memory {
		cfg.Storage = jetstream.MemoryStorage
	}
	return cfg
}

// errStreamConfig marks errors that retrying cannot fix: the stream and
// the configuration disagree.
var errStreamConfig = errors.New("natsbroker: stream configuration")

// ensure creates or updates the stream (Create), or checks that the
// existing one fits (not Create). An existing stream that already has the
// configuration is left alone: every node does this at every reconnect,
// and updates sent to a cluster that is electing a stream leader (one of
// its servers just went) only get in its way.
func (s *stream) ensure(ctx context.Context, js jetstream.JetStream) error {
	if s.spec.Create {
		want := s.config()
		if str, err := js.Stream(ctx, s.spec.Name); err == nil {
			have := str.CachedInfo().Config
			if s.spec.Replicas == 0 {
				want.Replicas = have.Replicas
			}
			if sameStreamConfig(have, want) {
				return nil
			}
		}
		if _, err := js.CreateOrUpdateStream(ctx, want); err != nil {
			return fmt.Errorf("natsbroker: create or update stream %q: %w", s.spec.Name, err)
		}
		return nil
	}
	str, err := js.Stream(ctx, s.spec.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("%w: stream %q does not exist (create it, or set Create)", errStreamConfig, s.spec.Name)
	}
	if err != nil {
		return fmt.Errorf("natsbroker: stream %q: %w", s.spec.Name, err)
	}
	cfg := str.CachedInfo().Config
	for _, want := range s.subjects {
		found := false
		for _, have := range cfg.Subjects {
			if brokers.PatternCovers(have, want) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("%w: stream %q does not store %q (its subjects: %s)", errStreamConfig, s.spec.Name, want, strings.Join(cfg.Subjects, ", "))
		}
	}
	if cfg.Retention != jetstream.LimitsPolicy {
		return fmt.Errorf("%w: stream %q has %v retention; history needs limits retention", errStreamConfig, s.spec.Name, cfg.Retention)
	}
	if cfg.MaxMsgsPerSubject > 0 {
		return fmt.Errorf("%w: stream %q has a per-subject limit (%d): it removes messages that resuming clients could not be told about", errStreamConfig, s.spec.Name, cfg.MaxMsgsPerSubject)
	}
	return nil
}

// isConfigErr reports whether err (from ensure) cannot be fixed by
// retrying: a missing or unfit stream, a JetStream API error that refuses
// the request (4xx), JetStream not enabled; as opposed to a lost
// connection, a timeout or a server-side failure (5xx: no leader yet; or
// nats-server's race between deleting an account's last stream and
// creating another, which fails the creation with a 500).
func isConfigErr(err error) bool {
	if errors.Is(err, errStreamConfig) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code < 500 || apiErr.ErrorCode == jetstream.JSErrCodeJetStreamNotEnabled ||
			apiErr.ErrorCode == jetstream.JSErrCodeJetStreamNotEnabledForAccount
	}
	return false
}

// sameStreamConfig reports whether an existing stream's configuration is
// what the broker would set (the fields it sets).
func sameStreamConfig(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Retention == want.Retention &&
		have.Discard == want.Discard && have.MaxAge == want.MaxAge && have.MaxMsgs == want.MaxMsgs &&
		have.MaxBytes == want.MaxBytes && have.Replicas == want.Replicas && have.Storage == want.Storage
}
