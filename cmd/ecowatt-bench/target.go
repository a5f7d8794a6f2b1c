package main

import (
	"fmt"
	"io"
	"time"

	"github.com/ecowatt/ecowatt/cmd/ecowatt-bench/internal/load"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// target is a broker under test and how the harness logs in to it.
// Publishers are always provisioned devices publishing on their own
// ecowatt/v1/dev/{id}/up/telemetry; the subscriber account is ACL-checked.
type target struct {
	name        string
	url         string
	deviceIDs   []string               // sorted; publishers take the first ones
	devicePass  func(id string) string // called at each connect
	subUser     string
	subPassword string
	// relayed: subscribers read ecowatt/v1/events/{id}/presence, where the
	// EcoWatt broker's in-process relay republishes device messages
	// (operators may not read up/ topics); otherwise they read the devices'
	// up/ topics directly.
	relayed bool
}

// ecowattTarget logs devices in with envelope password tokens from keys.
func ecowattTarget(url string, keys map[string]*envelope.Keys, ids []string, subUser, subPassword string, now func() time.Time) target {
	return target{
		name: "ecowatt", url: url, deviceIDs: ids, subUser: subUser, subPassword: subPassword, relayed: true,
		devicePass: func(id string) string { return envelope.Password(keys[id], id, now()) },
	}
}

// staticTarget logs devices in with fixed passwords (a Mosquitto password file).
func staticTarget(name, url string, pw map[string]string, ids []string, subUser, subPassword string) target {
	return target{
		name: name, url: url, deviceIDs: ids, subUser: subUser, subPassword: subPassword,
		devicePass: func(id string) string { return pw[id] },
	}
}

func (t target) fanInFilter() string {
	if t.relayed {
		return topics.FilterAllEvents
	}
	return topics.Root + "/dev/+/up/" + topics.KindTelemetry
}

func (t target) pairFilter(id string) string {
	if t.relayed {
		return topics.Event(id, topics.EventPresence)
	}
	return topics.DeviceUp(id, topics.KindTelemetry)
}

// Scenario modes.
const (
	modeFanIn = "fanin" // every publisher -> each of Subs subscribers on one filter
	modePairs = "pairs" // publisher i -> subscriber i
)

// scenario is one shape of broker load, run identically on every target.
type scenario struct {
	Name     string  `json:"name"`
	Mode     string  `json:"mode"`
	Pubs     int     `json:"publishers"`
	Subs     int     `json:"subscribers"` // pairs: equals Pubs
	QoS      byte    `json:"qos"`
	Size     int     `json:"size"`
	Count    int     `json:"count_per_publisher"`
	Rate     float64 `json:"rate_per_publisher"` // 0: unpaced
	Duration float64 `json:"max_secs"`           // bound on the send phase
}

func (s scenario) String() string {
	pace := "unpaced"
	if s.Rate > 0 {
		pace = fmt.Sprintf("%g msg/s total", s.Rate*float64(s.Pubs))
	}
	return fmt.Sprintf("%s %dx%d qos%d %dB %d/pub %s", s.Mode, s.Pubs, s.Subs, s.QoS, s.Size, s.Count, pace)
}

// config builds the load run of s against t.
func (s scenario) config(t target) (load.Config, error) {
	if s.Pubs > len(t.deviceIDs) {
		return load.Config{}, fmt.Errorf("scenario %s: %d publishers but %s has %d devices", s.Name, s.Pubs, t.name, len(t.deviceIDs))
	}
	cfg := load.Config{
		URL: t.url, QoS: s.QoS, Size: s.Size, Count: s.Count, Rate: s.Rate,
		Duration: time.Duration(s.Duration * float64(time.Second)),
	}
	all := make([]int, s.Pubs)
	for i, id := range t.deviceIDs[:s.Pubs] {
		all[i] = i
		cfg.Publishers = append(cfg.Publishers, load.Publisher{
			Account: load.Account{ClientID: id, Username: id, Password: func() string { return t.devicePass(id) }},
			Topic:   topics.DeviceUp(id, topics.KindTelemetry),
		})
	}
	sub := func(i int, filter string, from []int) load.Subscriber {
		return load.Subscriber{
			Account: load.Account{ClientID: fmt.Sprintf("%s-%d", t.subUser, i), Username: t.subUser,
				Password: func() string { return t.subPassword }},
			Filter: filter, From: from,
		}
	}
	switch s.Mode {
	case modeFanIn:
		for i := range s.Subs {
			cfg.Subscribers = append(cfg.Subscribers, sub(i, t.fanInFilter(), all))
		}
	case modePairs:
		if s.Subs != s.Pubs {
			return load.Config{}, fmt.Errorf("scenario %s: pairs need as many subscribers as publishers", s.Name)
		}
		for i, id := range t.deviceIDs[:s.Pubs] {
			cfg.Subscribers = append(cfg.Subscribers, sub(i, t.pairFilter(id), []int{i}))
		}
	default:
		return load.Config{}, fmt.Errorf("scenario %s: mode %q (want %s or %s)", s.Name, s.Mode, modeFanIn, modePairs)
	}
	return cfg, nil
}

// progressTo prints one progress line per report, prefixed by label.
func progressTo(w io.Writer, label string) func(load.Progress) {
	return func(p load.Progress) {
		fmt.Fprintf(w, "  %s: %5.1fs %-10s sent %8d  received %8d\n", label, p.Elapsed.Seconds(), p.Phase, p.Sent, p.Received)
	}
}

// summary is one line about a result.
func summary(r load.Result) string {
	s := fmt.Sprintf("recv %.0f msg/s (sent %.0f msg/s), lost %d/%d (%.2f%%), p50 %.2f ms p99 %.2f ms max %.2f ms",
		r.RecvRate, r.SentRate, r.Lost, r.Expected, r.LossPct, r.Latency.P50, r.Latency.P99, r.Latency.Max)
	if r.PubErrors > 0 || r.ConnLost > 0 || r.TimedOut {
		s += fmt.Sprintf(" [pub errors %d, connections lost %d, timed out %t]", r.PubErrors, r.ConnLost, r.TimedOut)
	}
	return s
}
