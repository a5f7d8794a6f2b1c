package main

import (
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/topics"
)

// TestReadyFileWebSocket: with --ws-addr the ready file names the bound
// WebSocket address, and an operator can use MQTT over it.
func TestReadyFileWebSocket(t *testing.T) {
	s := startServer(t, "--ws-addr", "127.0.0.1:0", "--operator", "watcher:watcher-pw:viewer")
	ws := s.Addrs["ws"]
	if ws == "" || ws == "127.0.0.1:0" {
		t.Fatalf("ready file %v: want the bound ws address", s.Addrs)
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ws://" + ws).
		SetClientID("watcher").SetUsername("watcher").SetPassword("watcher-pw").
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect over ws://%s: %v", ws, tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Subscribe(topics.FilterAllEvents, 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe over ws: %v", tok.Error())
	}

	if plain := startServer(t); plain.Addrs["ws"] != "" {
		t.Fatalf("ready file without --ws-addr has ws %q", plain.Addrs["ws"])
	}
}
