package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/certs"
	"github.com/ecowatt/ecowatt/topics"
)

// mosquitto finds a Mosquitto client; under CI a missing one is a failure.
func mosquitto(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (apt-get install mosquitto-clients)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

func hostPort(t *testing.T, a net.Addr) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// TestMosquittoInterop drives the broker with the real Mosquitto clients.
func TestMosquittoInterop(t *testing.T) {
	sub := mosquitto(t, "mosquitto_sub")
	pub := mosquitto(t, "mosquitto_pub")
	tb := startBroker(t, nil, "d1", "d2")
	host, port := hostPort(t, tb.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("operator mosquitto_sub receives events", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-V", "mqttv311",
			"-u", "viewer", "-P", "viewer-pw", "-t", topics.FilterAllEvents, "-q", "1", "-C", "1", "-v", "-W", "20")
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		topic := topics.Event("d1", topics.EventCommand)
		// Publish until the subscriber, once subscribed, gets one and exits.
		var err error
	loop:
		for {
			if perr := tb.Publish(ctx, topic, []byte(`{"status":"success"}`), 1); perr != nil {
				t.Fatal(perr)
			}
			select {
			case err = <-done:
				break loop
			case <-time.After(100 * time.Millisecond):
			}
		}
		if err != nil {
			t.Fatalf("mosquitto_sub: %v: %s", err, errOut.String())
		}
		if got, want := strings.TrimSpace(out.String()), topic+` {"status":"success"}`; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})

	t.Run("device credential cannot read another device", func(t *testing.T) {
		for _, filter := range []string{topics.DeviceDownFilter("d2"), topics.DeviceUpPrefix("d2") + "#", "#"} {
			cmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-V", "mqttv311",
				"-i", "d1", "-u", "d1", "-P", tb.auth.token("d1"), "-t", filter, "-C", "1", "-W", "3")
			// mosquitto_sub 2.0 prints this and exits (with status 0).
			out, _ := cmd.CombinedOutput()
			if strings.TrimSpace(string(out)) != "All subscription requests were denied." {
				t.Errorf("%s: mosquitto_sub output %q", filter, out)
			}
			tb.expectReject(t, ReasonACLSubscribe, filter)
		}
	})

	t.Run("device mosquitto_sub own down", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-i", "d2", "-u", "d2", "-P", tb.auth.token("d2"),
			"-t", topics.DeviceDownFilter("d2"), "-q", "1", "-C", "1", "-W", "20")
		var out bytes.Buffer
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
	loop:
		for {
			if perr := tb.Publish(ctx, topics.DeviceDown("d2", topics.KindConfig), []byte("cfg"), 1); perr != nil {
				t.Fatal(perr)
			}
			select {
			case err = <-done:
				break loop
			case <-time.After(100 * time.Millisecond):
			}
		}
		if err != nil || strings.TrimSpace(out.String()) != "cfg" {
			t.Fatalf("mosquitto_sub: %v, output %q", err, out.String())
		}
	})

	t.Run("admin mosquitto_pub to ops", func(t *testing.T) {
		in := tb.inbox(t, topics.FilterAllOps)
		topic := topics.Ops("d1", topics.KindCommand)
		out, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-u", "admin", "-P", "admin-pw",
			"-t", topic, "-q", "1", "-m", `{"command":{"id":"c1"}}`).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
		if m := in.wait(t, topic); m.Username != "admin" || string(m.Payload) != `{"command":{"id":"c1"}}` {
			t.Fatalf("got %+v", m)
		}
	})

	t.Run("wrong password refused", func(t *testing.T) {
		out, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-i", "d1", "-u", "d1", "-P", "v1.0.00",
			"-t", topics.DeviceUp("d1", topics.KindBirth), "-m", "x").CombinedOutput()
		if err == nil {
			t.Fatalf("mosquitto_pub succeeded: %s", out)
		}
		tb.expectReject(t, ReasonBadPassword, "")
	})
}

// TestTLS connects over the MQTTS listener with a CA made by certs.Generate.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	if err := certs.Generate(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tb := startBroker(t, func(c *Config) {
		c.MQTTSListener = tlsLn
		c.TLSCert = filepath.Join(dir, certs.ServerFile)
		c.TLSKey = filepath.Join(dir, certs.ServerKeyFile)
	}, "d1")
	if tb.TLSAddr() == nil {
		t.Fatal("TLSAddr is nil")
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, certs.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	_, port := hostPort(t, tb.TLSAddr())

	opts := func(host string, roots *x509.CertPool) *paho.ClientOptions {
		return tb.clientOpts("d1", "d1", tb.auth.token("d1")).
			SetTLSConfig(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}).
			AddBroker("ssl://" + net.JoinHostPort(host, port))
	}

	t.Run("paho with the dev CA", func(t *testing.T) {
		for _, host := range []string{"localhost", "127.0.0.1"} {
			o := opts(host, pool)
			o.Servers = o.Servers[1:] // only the ssl:// broker
			c := mustConnect(t, o)
			in := tb.inbox(t, topics.DeviceUp("d1", topics.KindBirth))
			if err := waitToken(t, c.Publish(topics.DeviceUp("d1", topics.KindBirth), 1, false, []byte(host))); err != nil {
				t.Fatal(err)
			}
			in.wait(t, topics.DeviceUp("d1", topics.KindBirth))
			c.Disconnect(100)
		}
	})

	t.Run("paho without the CA is refused", func(t *testing.T) {
		o := opts("127.0.0.1", x509.NewCertPool())
		o.Servers = o.Servers[1:]
		if _, err := connect(t, o); err == nil {
			t.Fatal("connected without trusting the CA")
		}
	})

	t.Run("mosquitto_sub with --cafile", func(t *testing.T) {
		sub := mosquitto(t, "mosquitto_sub")
		out, err := exec.Command(sub, "-h", "localhost", "-p", port, "--cafile", filepath.Join(dir, certs.CAFile),
			"-u", "viewer", "-P", "viewer-pw", "-t", topics.FilterAllEvents, "-C", "1", "-W", "1").CombinedOutput()
		// -W 1 ends it after a second with nothing received: exit code 27 is
		// the timeout, anything else (TLS or auth failure) is an error.
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 27 {
			t.Fatalf("mosquitto_sub over TLS: %v: %s (exit %s)", err, out, exitCode(err))
		}
	})
}

func exitCode(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return strconv.Itoa(ee.ExitCode())
	}
	return "none"
}
