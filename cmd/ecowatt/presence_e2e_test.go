package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// TestPresenceCleanDisconnect: a device written to the protocol alone
// (here mosquitto_pub: CONNECT without a will, a signed birth, DISCONNECT)
// is online while connected and offline as soon as it disconnects, and a
// command queued afterwards waits for it instead of being sent.
func TestPresenceCleanDisconnect(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "bye", 1)
	const id = "bye-0001"
	k, err := envelope.DeriveKeys(keys[id])
	if err != nil {
		t.Fatal(err)
	}
	topic := topics.DeviceUp(id, topics.KindBirth)
	body, _ := json.Marshal(topics.Birth{Online: true, FirmwareVersion: "1.0.0", BootCount: 1})
	raw, err := envelope.Seal(&k, topic, 1, time.Now(), body, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// -l: one message per stdin line, connected until stdin closes.
	host, port, _ := strings.Cut(s.MQTT, ":")
	pub := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-i", id, "-u", id,
		"-P", envelope.Password(&k, id, time.Now()), "-q", "1", "-t", topic, "-l")
	stdin, err := pub.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	pub.Stdout, pub.Stderr = &out, &out
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := stdin.Write(append(raw, '\n')); err != nil {
		t.Fatal(err)
	}
	var dev struct {
		Online bool `json:"online"`
	}
	eventually(t, 5*time.Second, id+" online after its birth", func() (bool, string) {
		s.api(t, "GET", "/api/v1/devices/"+id, nil, &dev)
		return dev.Online, "offline; mosquitto_pub: " + out.String()
	})
	_ = stdin.Close() // mosquitto_pub sends DISCONNECT and exits
	if err := pub.Wait(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out.String())
	}
	eventually(t, 5*time.Second, id+" offline after its DISCONNECT", func() (bool, string) {
		s.api(t, "GET", "/api/v1/devices/"+id, nil, &dev)
		return !dev.Online, "still online"
	})
	c := s.submitCommand(t, id, map[string]any{"action": "ping"})
	time.Sleep(time.Second)
	if c = s.command(t, c.ID); c.State != "queued" {
		t.Fatalf("command to a disconnected device is %s, want queued", c.State)
	}
}
