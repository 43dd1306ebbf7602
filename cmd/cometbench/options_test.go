package main

import (
	"io"
	"strings"
	"testing"
)

func TestParseRunFlagsRefusesNonLoopback(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--url", "http://10.0.0.1:8080"}, "not a loopback address"},
		{[]string{"--url", "http://example.com:8080"}, "not a loopback address"},
		{[]string{"--url", "https://127.0.0.1:8080"}, "scheme must be http"},
		{[]string{"--url", "http://127.0.0.1:8080/ws"}, "base URL"},
		{[]string{"--publish", "nats", "--nats-url", "nats://192.168.1.2:4222"}, "not a loopback address"},
		{[]string{"--src-ips", "10.0.0.1"}, "not a loopback"},
		{[]string{"--src-ips", "127.0.0.9-127.0.0.1"}, "ends before it starts"},
		{[]string{"--metrics-url", "http://10.1.1.1/metrics"}, "not a loopback address"},
		{[]string{"--sessions", "0"}, "--sessions"},
		{[]string{"--sessions", "10", "--channels", "11"}, "--channels"},
		{[]string{"--rate", "-1"}, "--rate"},
		{[]string{"--rate", "0,10"}, "idle"},
		{[]string{"--transport", "carrier-pigeon"}, "--transport"},
		{[]string{"--prefix", "demo..x"}, "--prefix"},
		{[]string{"--publish", "smtp"}, "--publish"},
		{[]string{"--transport", "sse", "--deflate"}, "--deflate"},
	}
	for _, tc := range cases {
		_, err := parseRunFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestParseRunFlagsDefaults(t *testing.T) {
	o, err := parseRunFlags([]string{"--src-ips", "127.0.0.1-127.0.0.3,127.0.1.1", "--rate", "10,20", "--pid", "1,2",
		"--url", "http://localhost:8080,http://127.0.0.1:8081"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.SrcIPs) != 4 || o.SrcIPs[2].String() != "127.0.0.3" || o.SrcIPs[3].String() != "127.0.1.1" {
		t.Errorf("src ips %v", o.SrcIPs)
	}
	if len(o.Rates) != 2 || len(o.PIDs) != 2 || len(o.URLs) != 2 {
		t.Errorf("rates %v pids %v urls %v", o.Rates, o.PIDs, o.URLs)
	}
	if len(o.MetricsURLs) != 2 || o.MetricsURLs[1] != "http://127.0.0.1:8081/metrics" {
		t.Errorf("metrics %v", o.MetricsURLs)
	}
}
