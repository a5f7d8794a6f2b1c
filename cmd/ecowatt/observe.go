package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// eventView is one audit event as the API sends it.
type eventView struct {
	ID     string          `json:"id"`
	Device string          `json:"device"`
	Kind   string          `json:"kind"`
	At     time.Time       `json:"at"`
	Data   json.RawMessage `json:"data"`
}

func printEvent(w io.Writer, ev eventView) {
	fmt.Fprintf(w, "%s  %-14s %-9s %s\n", ev.At.Local().Format("15:04:05.000"), ev.Device, ev.Kind, ev.Data)
}

// runEvents follows the live event stream (Server-Sent Events).
func runEvents(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "events", "events [--device ID] [--kind KIND] [-o table|json]")
	server, token := clientFlags(fs)
	device := fs.String("device", "", "only this device's events")
	kind := fs.String("kind", "", "only this kind: presence, config, command, fota, security")
	out := outputFlag(fs)
	if _, err := parseFlags(fs, e, args); err != nil {
		return err
	}
	q := url.Values{}
	if *device != "" {
		q.Set("device", *device)
	}
	if *kind != "" {
		q.Set("kind", *kind)
	}
	c := newClient(*server, *token)
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/api/v1/events?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "text/event-stream")
	stream := &http.Client{} // no timeout: the stream lasts until interrupted
	resp, err := stream.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("events: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c.decodeError(resp)
	}
	fmt.Fprintln(e.stderr, "following events; Ctrl-C to stop")
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue // ids, keep-alive comments, blank separators
		}
		if *out == "json" {
			fmt.Fprintln(e.stdout, data)
			continue
		}
		var ev eventView
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return fmt.Errorf("events: bad event %q: %w", data, err)
		}
		printEvent(e.stdout, ev)
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	return nil
}

// deviceEvents prints a device's audit timeline, oldest first.
func deviceEvents(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "device events", "device events ID [-n 50] [--kind KIND] [-o table|json]")
	server, token := clientFlags(fs)
	n := fs.Int("n", 50, "how many of the latest events")
	kind := fs.String("kind", "", "only this kind")
	out := outputFlag(fs)
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"device events: give one device ID"}
	}
	q := url.Values{"n": {fmt.Sprint(*n)}}
	if *kind != "" {
		q.Set("kind", *kind)
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(pos[0])+"/events?"+q.Encode(), nil, &raw); err != nil {
		return err
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var doc struct {
		Events []eventView `json:"events"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("device events: decode: %w", err)
	}
	sort.SliceStable(doc.Events, func(i, j int) bool { return doc.Events[i].At.Before(doc.Events[j].At) })
	for _, ev := range doc.Events {
		printEvent(e.stdout, ev)
	}
	return nil
}

// runTelemetry prints a device's telemetry as a time-by-register table.
func runTelemetry(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "telemetry", "telemetry ID [--registers a,b] [--since 1h | --from T --to T] [-o table|json]")
	server, token := clientFlags(fs)
	registers := fs.String("registers", "", "comma-separated register names (default: all stored)")
	since := fs.Duration("since", 10*time.Minute, "window ending now (ignored with --from)")
	from := fs.String("from", "", "start, RFC 3339")
	to := fs.String("to", "", "end, RFC 3339 (default now)")
	out := outputFlag(fs)
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"telemetry: give one device ID"}
	}
	q := url.Values{}
	if *registers != "" {
		q.Set("registers", *registers)
	}
	if *from == "" {
		*from = time.Now().Add(-*since).UTC().Format(time.RFC3339)
	}
	q.Set("from", *from)
	if *to != "" {
		q.Set("to", *to)
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(pos[0])+"/telemetry?"+q.Encode(), nil, &raw); err != nil {
		return err
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var doc struct {
		Registers []struct {
			Name   string `json:"name"`
			Unit   string `json:"unit"`
			Points []struct {
				T time.Time `json:"t"`
				V float64   `json:"v"`
			} `json:"points"`
		} `json:"registers"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("telemetry: decode: %w", err)
	}
	rows := map[time.Time][]string{}
	var times []time.Time
	for i, r := range doc.Registers {
		for _, p := range r.Points {
			if _, ok := rows[p.T]; !ok {
				rows[p.T] = make([]string, len(doc.Registers))
				times = append(times, p.T)
			}
			rows[p.T][i] = fmt.Sprintf("%g", p.V)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "TIME\t")
	for _, r := range doc.Registers {
		fmt.Fprintf(tw, "%s (%s)\t", r.Name, r.Unit)
	}
	fmt.Fprintln(tw)
	for _, t := range times {
		fmt.Fprintf(tw, "%s\t%s\t\n", t.Local().Format("15:04:05"), strings.Join(rows[t], "\t"))
	}
	if len(times) == 0 {
		fmt.Fprintln(e.stderr, "no telemetry in that window")
	}
	return tw.Flush()
}
