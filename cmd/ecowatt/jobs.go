package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend/jobs"
)

// jobConfigFlags collects repeated --config key=value settings.
type jobConfigFlags map[string]any

func (f jobConfigFlags) String() string { return "" }

// Set reads key=value: an integer value is a number, registers a
// comma-separated list; the server checks the rest.
func (f jobConfigFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want key=value, e.g. sampling_interval=10", s)
	}
	switch n, err := strconv.Atoi(v); {
	case k == "registers":
		regs := []string{}
		for _, r := range strings.Split(v, ",") {
			if r = strings.TrimSpace(r); r != "" {
				regs = append(regs, r)
			}
		}
		f[k] = regs
	case err == nil:
		f[k] = n
	default:
		f[k] = v
	}
	return nil
}

func jobCreate(ctx context.Context, e env, args []string) error {
	const synopsis = "job create (--selector S | --devices a,b) (--config key=value... | --command ACTION [--register R] [--value V] | --firmware V | --rotate-key) " +
		"--max-per-minute N [--batch-size N] [--canary N] [--max-failure-percent P --min-executed N] [--expires 24h] [--include-future] [--watch] [-o table|json]"
	k := newCall(e, "job create", synopsis, true)
	fs := k.fs
	sel := fs.String("selector", "", "devices to target, e.g. 'site=colombo,online=true' (docs/OPERATIONS.md)")
	devices := fs.String("devices", "", "comma-separated device IDs (instead of --selector)")
	all := fs.Bool("all", false, "every device (instead of --selector or --devices)")
	cfg := jobConfigFlags{}
	fs.Var(cfg, "config", "a config field to set, key=value (repeat for more), e.g. sampling_interval=10")
	action := fs.String("command", "", "command action: write_register, read_register, reboot or ping")
	register := fs.String("register", "", "the command's target register")
	value := fs.String("value", "", "the command's integer value (write_register)")
	firmware := fs.String("firmware", "", "firmware version to install (uploaded with fota upload)")
	rotate := fs.Bool("rotate-key", false, "rotate each device's PSK over the air (needs the role admin)")
	perMin := fs.Int("max-per-minute", 0, "at most this many devices' parts issued a minute (required)")
	batch := fs.Int("batch-size", 0, "parts issued together (default: max-per-minute/60, a batch a second)")
	canary := fs.Int("canary", 0, "devices that go first, alone")
	serial := fs.Bool("serial-batches", false, "start a batch only when every part of the previous one has ended")
	maxFail := fs.Float64("max-failure-percent", -1, "abort when more than this percentage of the executed parts failed")
	minExec := fs.Int("min-executed", 10, "parts with an outcome before the abort rule applies")
	inProgress := fs.Bool("count-in-progress", false, "the abort rule's failure share is over the parts started, in progress included")
	expires := fs.Duration("expires", 0, "end the job after this long (server default 7 days); offline devices get their part until then")
	future := fs.Bool("include-future", false, "devices matching the selector later join the job")
	watch := fs.Bool("watch", false, "show progress until the job ends")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	body := map[string]any{"max_per_minute": *perMin}
	switch targets := btoi(*sel != "") + btoi(*devices != "") + btoi(*all); {
	case targets != 1:
		return k.usage("give exactly one of --selector, --devices and --all")
	case *sel != "":
		body["selector"] = *sel
	case *devices != "":
		body["devices"] = strings.Split(*devices, ",")
	default:
		body["all"] = true
	}
	n := 0
	if len(cfg) > 0 {
		body["config"], n = map[string]any(cfg), n+1
	}
	if *action != "" {
		c := map[string]any{"action": *action}
		if *register != "" {
			c["target_register"] = *register
		}
		if *value != "" {
			v, err := strconv.Atoi(*value)
			if err != nil {
				return k.usage(fmt.Sprintf("--value %q is not an integer", *value))
			}
			c["value"] = v
		}
		body["command"], n = c, n+1
	}
	if *firmware != "" {
		body["firmware"], n = map[string]string{"version": *firmware}, n+1
	}
	if *rotate {
		body["rotate_key"], n = map[string]any{}, n+1
	}
	if n != 1 {
		return k.usage("give exactly one action: --config, --command, --firmware or --rotate-key")
	}
	if *batch != 0 {
		body["batch_size"] = *batch
	}
	if *canary != 0 {
		body["canary"] = *canary
	}
	if *serial {
		body["serial_batches"] = true
	}
	switch {
	case *maxFail >= 0:
		body["abort"] = map[string]any{"max_failure_percent": *maxFail, "min_executed": *minExec, "count_in_progress": *inProgress}
	case *inProgress:
		return k.usage("--count-in-progress qualifies an abort rule: give --max-failure-percent too")
	}
	if *expires > 0 {
		body["expires_at"] = time.Now().Add(*expires).UTC().Format(time.RFC3339)
	}
	if *future {
		body["include_future"] = true
	}
	raw, err := k.send(ctx, "POST", apiPath("jobs"), body)
	if err != nil {
		return err
	}
	j, err := decode[jobs.Job](k, raw)
	if err != nil {
		return err
	}
	if *watch {
		return watchJob(ctx, k, j.ID, 24*time.Hour)
	}
	return render(k, raw, func(w io.Writer, j jobs.Job) error {
		_, err := fmt.Fprintf(w, "job %s (%s) created for %d devices; follow it with: ecowatt job status %s --watch\n", j.ID, j.Kind, j.Total, j.ID)
		return err
	})
}

func jobList(ctx context.Context, e env, args []string) error {
	k := newCall(e, "job list", "job list [--limit N] [-o table|json]", true)
	limit := k.fs.Int("limit", 0, "newest jobs to show (server default 100)")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	q := url.Values{}
	if *limit != 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	return show(ctx, k, "GET", withQuery(apiPath("jobs"), q), nil, func(w io.Writer, l struct {
		Jobs []jobs.Job `json:"jobs"`
	}) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tKIND\tSTATE\tPROGRESS\tSUCCEEDED\tFAILED\tDEVICES\tCREATED")
		for _, j := range l.Jobs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", j.ID, j.Kind, j.State, bar(j.Percent, 20),
				j.Counts[jobs.DevSucceeded], j.Counts[jobs.DevFailed], j.Total, j.CreatedAt.Local().Format(time.DateTime))
		}
		return tw.Flush()
	})
}

func jobStatus(ctx context.Context, e env, args []string) error {
	k := newCall(e, "job status", "job status JID [--watch] [--timeout 1h] [-o table|json]", true)
	watch := k.fs.Bool("watch", false, "redraw every second until the job ends")
	timeout := k.fs.Duration("timeout", time.Hour, "how long --watch watches")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *watch {
		return watchJob(ctx, k, pos[0], *timeout)
	}
	return show(ctx, k, "GET", apiPath("jobs", pos[0]), nil, printJob)
}

func jobDevices(ctx context.Context, e env, args []string) error {
	k := newCall(e, "job devices", "job devices JID [--state failed] [--limit N] [--cursor C] [-o table|json]", true)
	state := k.fs.String("state", "", "only devices in this state ("+strings.Join(jobs.DeviceStates, ", ")+")")
	limit := k.fs.Int("limit", 0, "devices per page (server default 100)")
	cursor := k.fs.String("cursor", "", "next_cursor of the previous page")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	q := url.Values{}
	if *state != "" {
		q.Set("state", *state)
	}
	if *limit != 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	if *cursor != "" {
		q.Set("cursor", *cursor)
	}
	return show(ctx, k, "GET", withQuery(apiPath("jobs", pos[0], "devices"), q), nil, func(w io.Writer, p jobs.DevicePage) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tSTATE\tISSUED\tREASON")
		for _, d := range p.Devices {
			issued := "-"
			if d.IssuedAt != nil {
				issued = d.IssuedAt.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Device, d.State, issued, d.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if p.Next != "" {
			fmt.Fprintf(w, "%d devices; next page: --cursor %s\n", p.Total, p.Next)
		}
		return nil
	})
}

// jobAction is pause, resume or cancel.
func jobAction(action string) func(context.Context, env, []string) error {
	return func(ctx context.Context, e env, args []string) error {
		k := newCall(e, "job "+action, "job "+action+" JID [-o table|json]", true)
		pos, err := k.parse(args, 1, 1)
		if err != nil {
			return err
		}
		return show(ctx, k, "POST", apiPath("jobs", pos[0], action), nil, printJob)
	}
}

// watchJob prints the job every second until it ends; it fails unless
// the job completed without a failed device.
func watchJob(ctx context.Context, k *call, jid string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var raw json.RawMessage
		err := k.c.do(ctx, "GET", apiPath("jobs", jid), nil, &raw)
		if err == nil {
			j, err := decode[jobs.Job](k, raw)
			if err != nil {
				return err
			}
			if k.out == outputJSON {
				err = printJSON(k.e.stdout, raw)
			} else {
				err = printJob(k.e.stdout, j)
			}
			if err != nil {
				return err
			}
			if jobs.JobFinal(j.State) {
				if j.State != jobs.StateCompleted || j.Counts[jobs.DevFailed] > 0 {
					return fmt.Errorf("job %s %s: %d failed %s", jid, j.State, j.Counts[jobs.DevFailed], j.Reason)
				}
				return nil
			}
		} else if ae, ok := errors.AsType[*apiError](err); ok && ae.Status == http.StatusNotFound {
			return fmt.Errorf("%s: %w", k.name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("job %s: not ended after %v (it carries on; ecowatt job status %s)", jid, timeout, jid)
		case <-t.C:
		}
	}
}

// printJob shows a job with a progress bar and its per-state counts.
func printJob(w io.Writer, j jobs.Job) error {
	fmt.Fprintf(w, "job %s  %s  %s", j.ID, j.Kind, strings.ToUpper(j.State))
	if j.Phase == "canary" {
		fmt.Fprint(w, " (canary)")
	}
	if j.Reason != "" {
		fmt.Fprintf(w, " (%s)", j.Reason)
	}
	target := j.Spec.Selector
	if target == "" {
		target = strings.Join(j.Spec.Devices, ",")
		if len(target) > 60 {
			target = target[:57] + "..."
		}
	}
	fmt.Fprintf(w, "\n  target %s, %d/min in batches of %d\n", target, j.Spec.MaxPerMinute, j.Spec.BatchSize)
	ended := j.Total - j.Counts[jobs.DevQueued] - j.Counts[jobs.DevInProgress]
	fmt.Fprintf(w, "  progress  %s %d/%d ended\n", bar(j.Percent, 30), ended, j.Total)
	var parts []string
	for _, s := range jobs.DeviceStates {
		if n := j.Counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	_, err := fmt.Fprintf(w, "  devices   %s\n", strings.Join(parts, ", "))
	return err
}

// btoi counts a set flag, for "exactly one of" checks.
func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
