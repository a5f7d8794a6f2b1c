package main

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/topics"
)

// TestOperatorSecurityEventTopic: an operator's failed login is published
// on ecowatt/v1/events/operators/{name}/security, naming the operator, and
// nothing lands on ecowatt/v1/events/{name}/security, where {name} could be
// a device's ID.
func TestOperatorSecurityEventTopic(t *testing.T) {
	s := startServer(t, "--operator", "watcher:watcher-pw:viewer,alice:alice-pw:admin")
	var mu sync.Mutex
	got := map[string][]byte{}
	watch := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + s.MQTT).
		SetClientID("watcher").SetUsername("watcher").SetPassword("watcher-pw").
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := watch.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect watcher: %v", tok.Error())
	}
	defer watch.Disconnect(100)
	tok := watch.Subscribe(topics.FilterAllEvents, 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		defer mu.Unlock()
		got[m.Topic()] = m.Payload()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	bad := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + s.MQTT).
		SetClientID("alice").SetUsername("alice").SetPassword("wrong").
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := bad.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		t.Fatal("alice connected with a wrong password")
	}

	want := topics.OperatorEvent("alice", topics.EventSecurity)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		b, ok := got[want]
		mu.Unlock()
		if ok {
			var ev map[string]any
			if err := json.Unmarshal(b, &ev); err != nil {
				t.Fatal(err)
			}
			if ev["operator"] != "alice" || ev["device"] != nil || ev["kind"] != "security" ||
				!strings.Contains(string(b), `"reason":"bad_password"`) {
				t.Fatalf("operator event %s", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no event on %s; got %v", want, keys(&mu, got))
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if b, ok := got[topics.Event("alice", topics.EventSecurity)]; ok {
		t.Fatalf("operator event in the device namespace: %s", b)
	}
}

func keys(mu *sync.Mutex, m map[string][]byte) []string {
	mu.Lock()
	defer mu.Unlock()
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
