package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// rawLogin sends one MQTT 3.1.1 CONNECT over plain TCP and returns the
// CONNACK return code (0xff when the broker closed without one).
func rawLogin(t *testing.T, addr, clientID, user, password string) byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(password)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4) // CONNACK: 0x20, 2, flags, code
	if _, err := io.ReadFull(bufio.NewReader(conn), ack); err != nil || ack[0] != 0x20 {
		return 0xff
	}
	return ack[3]
}

type auditEvent struct {
	Kind string          `json:"kind"`
	Data json.RawMessage `json:"data"`
}

func auditEvents(t *testing.T, s *testServer, dev string) []auditEvent {
	t.Helper()
	var res struct{ Events []auditEvent }
	if code := s.api(t, "GET", "/api/v1/devices/"+dev+"/events?n=500", nil, &res); code != 200 {
		t.Fatalf("GET events: %d", code)
	}
	return res.Events
}

// TestRefusedLoginsKeepAuditHistory checks (issue 18 item 1) that 1,300
// refused logins under a device's name, from a client with no credentials,
// do not push the device's real history out of its capped audit stream:
// they are all counted, but become at most a sample of security events.
func TestRefusedLoginsKeepAuditHistory(t *testing.T) {
	s := startServer(t)
	const dev = "victim"
	if code := s.api(t, "POST", "/api/v1/devices", map[string]string{"id": dev}, nil); code != 201 {
		t.Fatalf("provision: %d", code)
	}
	for _, p := range []string{`{"sampling_interval":2,"upload_interval":4}`, `{"registers":["voltage"]}`, `{"upload_interval":6}`} {
		if code := s.api(t, "PUT", "/api/v1/devices/"+dev+"/config", json.RawMessage(p), nil); code != 200 {
			t.Fatalf("PUT config: %d", code)
		}
	}
	countKind := func(evs []auditEvent, kind string) int {
		n := 0
		for _, e := range evs {
			if e.Kind == kind {
				n++
			}
		}
		return n
	}
	history := countKind(auditEvents(t, s, dev), "config")
	if history == 0 {
		t.Fatal("no config events in the audit log to protect")
	}
	const junk = 1300
	for range junk {
		if code := rawLogin(t, s.MQTT, dev, dev, "v1.0.junk"); code == 0 {
			t.Fatal("a junk login was accepted")
		}
	}
	eventually(t, 10*time.Second, "every refusal counted", func() (bool, string) {
		m := s.metric(t, "ecowatt_security_rejections_total", "")
		return m >= junk, "counted " + itoa(int(m))
	})
	evs := auditEvents(t, s, dev)
	if got := countKind(evs, "config"); got != history {
		t.Errorf("config events after %d junk logins: %d, want %d (history lost)", junk, got, history)
	}
	if sec := countKind(evs, "security"); sec < 1 || sec > 2 {
		t.Errorf("security events in the audit log: %d, want a sample of 1 or 2", sec)
	}
	if m := s.metric(t, "ecowatt_security_events_suppressed_total", ""); m < junk-2 {
		t.Errorf("ecowatt_security_events_suppressed_total = %v, want >= %d", m, junk-2)
	}
}

// TestUnknownLoginsCostNoBcrypt checks (issue 18 item 2) that logins under
// made-up names are refused without a bcrypt comparison, and that an
// operator's wrong password does cost one (so the counter counts).
func TestUnknownLoginsCostNoBcrypt(t *testing.T) {
	s := startServer(t, "--operator", "alice:right-password")
	for i := range 15 {
		name := "nobody" + itoa(i)
		if code := rawLogin(t, s.MQTT, name, name, "guess"); code != 5 {
			t.Fatalf("unknown user: CONNACK %d, want 5 (not authorized)", code)
		}
	}
	if got := metric(t, s, "ecowatt_operator_password_checks_total"); got != "0" {
		t.Fatalf("bcrypt comparisons after 15 unknown users: %q, want 0", got)
	}
	if code := rawLogin(t, s.MQTT, "alice", "alice", "wrong"); code != 5 {
		t.Fatalf("wrong password: CONNACK %d, want 5", code)
	}
	if got := metric(t, s, "ecowatt_operator_password_checks_total"); got != "1" {
		t.Fatalf("bcrypt comparisons after one wrong password: %q, want 1", got)
	}
}

// TestDeviceAndOperatorNamesDistinct checks (issue 18 item 7) that a device
// cannot be provisioned under an operator's name (409, and the operator
// still logs in), and that serve refuses an operator named like a device.
func TestDeviceAndOperatorNamesDistinct(t *testing.T) {
	s := startServer(t, "--operator", "admin1:admin1-password")
	var e struct {
		Error struct{ Code, Message, Field string } `json:"error"`
	}
	if code := s.api(t, "POST", "/api/v1/devices", map[string]string{"id": "admin1"}, &e); code != 409 ||
		!strings.Contains(e.Error.Message, "operator") {
		t.Fatalf("provision admin1: %d %+v, want 409 naming the operator", code, e)
	}
	if code := rawLogin(t, s.MQTT, "admin1", "admin1", "admin1-password"); code != 0 {
		t.Fatalf("operator admin1 after the refused device: CONNACK %d, want 0", code)
	}

	if code := s.api(t, "POST", "/api/v1/devices", map[string]string{"id": "gw-7"}, nil); code != 201 {
		t.Fatalf("provision gw-7: %d", code)
	}
	s.stop(t)
	args := append(append([]string{}, s.args...), "--operator", "gw-7:pw-for-gw7", "--http-addr", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out syncBuffer
	err := run(ctx, args, func(string) string { return "" }, &out, &out)
	if err == nil || !strings.Contains(err.Error()+out.String(), "device") {
		t.Fatalf("serve with operator gw-7 = device gw-7: %v\n%s", err, out.String())
	}
}

// TestExternalBrokerNeedsCredentialsOrAck checks (issue 18 item 10) that
// serve refuses an external broker without --broker-user unless
// --broker-insecure acknowledges it.
func TestExternalBrokerNeedsCredentialsOrAck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out syncBuffer
	err := run(ctx, []string{"serve", "--http-addr", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--broker-url", "tcp://127.0.0.1:1"}, func(string) string { return "" }, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "--broker-insecure") {
		t.Fatalf("serve --broker-url without --broker-user: %v, want a refusal naming --broker-insecure\n%s", err, out.String())
	}
}
