package natsbroker

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestIsConfigErr(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("%w: missing", errStreamConfig), true},
		{fmt.Errorf("wrapped: %w", &jetstream.APIError{Code: 400, ErrorCode: 10065, Description: "subjects overlap"}), true},
		{jetstream.ErrJetStreamNotEnabled, true},
		{jetstream.ErrJetStreamNotEnabledForAccount, true},
		// The server's own failures and unavailability are retried.
		{&jetstream.APIError{Code: 500, ErrorCode: 10049, Description: "error creating store for stream"}, false},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, false},
		{context.DeadlineExceeded, false},
		{nats.ErrNoResponders, false},
		{nats.ErrConnectionClosed, false},
	}
	for _, tc := range tests {
		if got := isConfigErr(tc.err); got != tc.want {
			t.Errorf("isConfigErr(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestNewStreamsSubjects(t *testing.T) {
	subj, err := newSubjects("app")
	if err != nil {
		t.Fatal(err)
	}
	st, err := newStreams([]StreamSpec{{Name: "S", Patterns: []string{"a.b", "a.>", "x.*", "x.y", "a.>"}}}, subj)
	if err != nil {
		t.Fatal(err)
	}
	// The server refuses overlapping subjects within a stream: covered
	// ones are dropped, duplicates kept once.
	if want := []string{"app.a.>", "app.x.*"}; !slices.Equal(st[0].subjects, want) {
		t.Errorf("subjects %v, want %v", st[0].subjects, want)
	}
	cfg := st[0].config()
	if cfg.MaxMsgs != -1 || cfg.MaxBytes != -1 || cfg.Replicas != 1 || cfg.MaxMsgsPerSubject != 0 || cfg.Storage != jetstream.FileStorage {
		t.Errorf("defaults: %+v", cfg)
	}
}
