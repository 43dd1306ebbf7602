package amqpbroker

import (
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/cometgate/cometgate/brokers"
)

// maxShortStr is the longest AMQP short string: routing keys, binding
// keys, exchange names, header keys and the content type.
const maxShortStr = 255

// contentTypeHeader is the brokers.Message header carried in the AMQP
// content-type property rather than in the headers table.
const contentTypeHeader = "Content-Type"

// errBadName is wrapped by every channel, pattern and header validation
// error.
var errBadName = brokers.ErrInvalidName

// keys maps channels to AMQP routing keys, patterns to binding keys, and
// delivered routing keys back to channels. The zero value maps channels to
// routing keys unchanged.
type keys struct {
	// prefix is "" or a valid channel followed by ".".
	prefix string
}

// newKeys validates and normalizes a prefix: "app" and "app." both become
// "app.".
func newKeys(prefix string) (keys, error) {
	prefix = strings.TrimSuffix(prefix, ".")
	if prefix == "" {
		return keys{}, nil
	}
	if err := checkChannel(prefix); err != nil {
		return keys{}, fmt.Errorf("amqpbroker: subject prefix: %w", err)
	}
	return keys{prefix: prefix + "."}, nil
}

// routingKey returns the routing key of a channel.
func (k keys) routingKey(channel string) string { return k.prefix + channel }

// bindingKey returns the binding key of a pattern: "*" is the same in
// both syntaxes, a trailing ">" becomes "#". "#" also matches zero words
// where ">" needs one, so a binding can route a few routing keys that the
// pattern does not match ("a" for "a.>"); the dispatcher filters them out.
func (k keys) bindingKey(pattern string) string {
	switch {
	case pattern == ">":
		return k.prefix + "#"
	case strings.HasSuffix(pattern, ".>"):
		return k.prefix + pattern[:len(pattern)-1] + "#"
	}
	return k.prefix + pattern
}

// channel returns the channel of a delivered routing key, and false when
// the key lacks the prefix or is not a valid channel (such a message is
// ignored: a plain AMQP client may publish any routing key).
func (k keys) channel(routingKey string) (string, bool) {
	ch, ok := strings.CutPrefix(routingKey, k.prefix)
	if !ok || checkChannel(ch) != nil {
		return "", false
	}
	return ch, true
}

// checkLen reports whether a name still fits an AMQP short string once
// prefixed.
func (k keys) checkLen(name string) error {
	if n := len(k.prefix) + len(name); n > maxShortStr {
		return fmt.Errorf("%w: %q is %d bytes with its prefix, more than AMQP's %d", errBadName, name, n, maxShortStr)
	}
	return nil
}

// checkChannel reports whether name is a concrete channel in the broker
// alphabet (brokers.CheckName). AMQP gives "#" a meaning in binding keys,
// so it is refused in any token.
func checkChannel(name string) error {
	return brokers.CheckName(name, false, "#")
}

// checkPattern reports whether name is a subscription pattern in the
// broker alphabet, "#" refused like in checkChannel.
func checkPattern(name string) error {
	return brokers.CheckName(name, true, "#")
}

// publishing converts a message header to AMQP properties: Content-Type
// goes to the content-type property, every other entry to the headers
// table as a string.
func publishing(h map[string]string) (contentType string, table amqp.Table, err error) {
	for k, v := range h {
		switch {
		case k == "":
			return "", nil, fmt.Errorf("%w: empty header key", errBadName)
		case len(k) > maxShortStr:
			return "", nil, fmt.Errorf("%w: header key %.32q… longer than %d bytes", errBadName, k, maxShortStr)
		case k == contentTypeHeader:
			if len(v) > maxShortStr {
				return "", nil, fmt.Errorf("%w: Content-Type longer than %d bytes", errBadName, maxShortStr)
			}
			contentType = v
		default:
			if table == nil {
				table = make(amqp.Table, len(h))
			}
			table[k] = v
		}
	}
	return contentType, table, nil
}

// headerMap converts a delivery's content type and headers table back to a
// message header; nil when there are none. Values that plain AMQP
// clients may send besides strings are formatted: numbers, booleans and
// timestamps as text, byte arrays as they are; nested tables, arrays and
// void values are left out.
func headerMap(d *amqp.Delivery) map[string]string {
	if d.ContentType == "" && len(d.Headers) == 0 {
		return nil
	}
	out := make(map[string]string, len(d.Headers)+1)
	for k, v := range d.Headers {
		switch v := v.(type) {
		case string:
			out[k] = v
		case []byte:
			out[k] = string(v)
		case time.Time:
			out[k] = v.UTC().Format(time.RFC3339)
		case bool, int, int8, int16, int32, int64, uint8, uint16, uint32, uint64, float32, float64:
			out[k] = fmt.Sprint(v)
		case amqp.Decimal:
			out[k] = decimalString(v)
		}
	}
	if d.ContentType != "" {
		out[contentTypeHeader] = d.ContentType
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// decimalString formats an AMQP decimal (Value·10^-Scale).
func decimalString(d amqp.Decimal) string {
	s := fmt.Sprint(d.Value)
	if d.Scale == 0 {
		return s
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	if n := int(d.Scale); len(s) <= n {
		s = strings.Repeat("0", n-len(s)+1) + s
	}
	s = s[:len(s)-int(d.Scale)] + "." + s[len(s)-int(d.Scale):]
	if neg {
		s = "-" + s
	}
	return s
}
