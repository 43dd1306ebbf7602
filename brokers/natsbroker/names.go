package natsbroker

import (
	"fmt"
	"strings"

	"github.com/cometgate/cometgate/brokers"
)

// errBadName is wrapped by every channel, pattern and header validation
// error.
var errBadName = brokers.ErrInvalidName

// subjects maps channels to NATS subjects and back. The zero value maps
// channels to subjects unchanged.
type subjects struct {
	// prefix is "" or a valid literal subject followed by ".".
	prefix string
}

// newSubjects validates and normalizes a subject prefix: "app" and "app."
// both become "app.".
func newSubjects(prefix string) (subjects, error) {
	prefix = strings.TrimSuffix(prefix, ".")
	if prefix == "" {
		return subjects{}, nil
	}
	if err := checkChannel(prefix); err != nil {
		return subjects{}, fmt.Errorf("natsbroker: subject prefix: %w", err)
	}
	return subjects{prefix: prefix + "."}, nil
}

// subject returns the NATS subject for a channel or pattern.
func (s subjects) subject(channel string) string { return s.prefix + channel }

// channel returns the channel for a delivered subject, and false when the
// subject lacks the prefix (such a message is ignored).
func (s subjects) channel(subject string) (string, bool) {
	ch, ok := strings.CutPrefix(subject, s.prefix)
	return ch, ok && ch != ""
}

// checkChannel reports whether name is a concrete channel in the broker
// alphabet (brokers.CheckName).
func checkChannel(name string) error {
	return brokers.CheckName(name, false, "")
}

// checkPattern reports whether name is a subscription pattern in the
// broker alphabet.
func checkPattern(name string) error {
	return brokers.CheckName(name, true, "")
}

// checkHeader reports whether a header can travel in a NATS message
// header: keys are non-empty and free of whitespace, control characters
// and ':'; values are free of CR and LF.
func checkHeader(key, value string) error {
	if key == "" {
		return fmt.Errorf("%w: empty header key", errBadName)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c == 0x7f || c == ':' {
			return fmt.Errorf("%w: header key %q contains %q", errBadName, key, c)
		}
	}
	if strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("%w: header %q has a line break in its value", errBadName, key)
	}
	return nil
}
