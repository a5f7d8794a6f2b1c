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
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/telemetry"
	"github.com/ecowatt/ecowatt/topics"
)

func printEvent(w io.Writer, ev backend.Event) {
	by := ""
	if ev.By != "" {
		by = "by " + ev.By + "  "
	}
	fmt.Fprintf(w, "%s  %-14s %-9s %s%s\n", ev.At.Local().Format("15:04:05.000"), ev.Device, ev.Kind, by, ev.Data)
}

// runEvents follows the live event stream (Server-Sent Events).
func runEvents(ctx context.Context, e env, args []string) error {
	k := newCall(e, "events", "events [--device ID] [--kind KIND] [-o table|json]", true)
	device := k.fs.String("device", "", "only this device's events")
	kind := k.fs.String("kind", "", "only this kind: "+strings.Join(eventKinds, ", "))
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	q := url.Values{}
	if *device != "" {
		q.Set("device", *device)
	}
	if *kind != "" {
		q.Set("kind", *kind)
	}
	c := k.c
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+withQuery(apiPath("events"), q), nil)
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
		if k.out == outputJSON {
			fmt.Fprintln(e.stdout, data)
			continue
		}
		var ev backend.Event
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

// eventKinds are the kinds of audit events, for --kind.
var eventKinds = []string{topics.EventPresence, topics.EventConfig, topics.EventCommand, topics.EventFOTA, topics.EventSecurity, topics.EventLabels, topics.EventKey}

// deviceEvents prints a device's audit timeline, oldest first.
func deviceEvents(ctx context.Context, e env, args []string) error {
	k := newCall(e, "device events", "device events ID [-n 50] [--kind KIND] [-o table|json]", true)
	n := k.fs.Int("n", 50, "how many of the latest events")
	kind := k.fs.String("kind", "", "only this kind: "+strings.Join(eventKinds, ", "))
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	q := url.Values{"n": {strconv.Itoa(*n)}}
	if *kind != "" {
		q.Set("kind", *kind)
	}
	return show(ctx, k, "GET", withQuery(apiPath("devices", pos[0], "events"), q), nil, func(w io.Writer, doc struct {
		Events []backend.Event `json:"events"`
	}) error {
		sort.SliceStable(doc.Events, func(i, j int) bool { return doc.Events[i].At.Before(doc.Events[j].At) })
		for _, ev := range doc.Events {
			printEvent(w, ev)
		}
		return nil
	})
}

// runTelemetry prints a device's telemetry as a time-by-register table.
func runTelemetry(ctx context.Context, e env, args []string) error {
	k := newCall(e, "telemetry", "telemetry ID [--registers a,b] [--since 1h | --from T --to T] [-o table|json]", true)
	registers := k.fs.String("registers", "", "comma-separated register names (default: all stored)")
	since := k.fs.Duration("since", 10*time.Minute, "window ending now (ignored with --from)")
	from := k.fs.String("from", "", "start, RFC 3339")
	to := k.fs.String("to", "", "end, RFC 3339 (default now)")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
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
	return show(ctx, k, "GET", withQuery(apiPath("devices", pos[0], "telemetry"), q), nil, func(w io.Writer, s telemetry.Series) error {
		if allEmpty(s.Registers) {
			fmt.Fprintln(e.stderr, "no telemetry in that window")
		}
		return printSeries(w, s)
	})
}

// allEmpty reports whether no register has a point.
func allEmpty(rs []telemetry.RegisterSeries) bool {
	for _, r := range rs {
		if len(r.Points) > 0 {
			return false
		}
	}
	return true
}

// printSeries draws one line a sample time, one column a register.
func printSeries(w io.Writer, s telemetry.Series) error {
	rows := map[time.Time][]string{}
	var times []time.Time
	for i, r := range s.Registers {
		for _, p := range r.Points {
			if _, ok := rows[p.T]; !ok {
				rows[p.T] = make([]string, len(s.Registers))
				times = append(times, p.T)
			}
			rows[p.T][i] = fmt.Sprintf("%g", p.V)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "TIME\t")
	for _, r := range s.Registers {
		fmt.Fprintf(tw, "%s (%s)\t", r.Name, r.Unit)
	}
	fmt.Fprintln(tw)
	for _, t := range times {
		fmt.Fprintf(tw, "%s\t%s\t\n", t.Local().Format("15:04:05"), strings.Join(rows[t], "\t"))
	}
	return tw.Flush()
}
