package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/httpapi"
	"github.com/ecowatt/ecowatt/topics"
)

// lifecycleCall is a device lifecycle command: ID, --as and -o.
type lifecycleCall struct {
	*call
	as *string
}

func newLifecycleCall(e env, name, synopsis string) *lifecycleCall {
	k := newCall(e, name, synopsis, true)
	return &lifecycleCall{call: k, as: k.fs.String("as", "", "operator name recorded in the device's audit trail (default $USER)")}
}

// parse parses args (one ID) and sets the operator header.
func (k *lifecycleCall) parse(args []string) (string, error) {
	pos, err := k.call.parse(args, 1, 1)
	if err != nil {
		return "", err
	}
	who := *k.as
	if who == "" && topics.ValidateID(k.e.getenv("USER")) == nil {
		who = k.e.getenv("USER")
	}
	if who != "" {
		k.c.header = http.Header{httpapi.OperatorHeader: {who}}
	}
	return pos[0], nil
}

func deviceDisable(ctx context.Context, e env, args []string) error {
	k := newLifecycleCall(e, "device disable", "device disable ID [--reason TEXT] [--cancel-commands] [--as NAME] [-o table|json]")
	reason := k.fs.String("reason", "", "why, for the device's record and audit trail")
	cancel := k.fs.Bool("cancel-commands", false, "also cancel the device's queued commands (default: they stay queued)")
	id, err := k.parse(args)
	if err != nil {
		return err
	}
	q := url.Values{}
	if *cancel {
		q.Set("cancel_commands", "true")
	}
	return show(ctx, k.call, "POST", withQuery(apiPath("devices", id, "disable"), q), map[string]string{"reason": *reason}, printLifecycle)
}

func deviceEnable(ctx context.Context, e env, args []string) error {
	k := newLifecycleCall(e, "device enable", "device enable ID [--reason TEXT] [--as NAME] [-o table|json]")
	reason := k.fs.String("reason", "", "why, for the device's record and audit trail")
	id, err := k.parse(args)
	if err != nil {
		return err
	}
	return show(ctx, k.call, "POST", apiPath("devices", id, "enable"), map[string]string{"reason": *reason}, printLifecycle)
}

func deviceRemove(ctx context.Context, e env, args []string) error {
	k := newLifecycleCall(e, "device remove", "device remove ID [--purge] [--reason TEXT] [--as NAME] [-o table|json]")
	purge := k.fs.Bool("purge", false, "delete every record of the device (timeline, history) so that the ID can be provisioned again")
	reason := k.fs.String("reason", "", "why, for the device's record and audit trail")
	id, err := k.parse(args)
	if err != nil {
		return err
	}
	body := map[string]string{"reason": *reason}
	if *purge {
		return show(ctx, k.call, "DELETE", withQuery(apiPath("devices", id), url.Values{"purge": {"true"}}), body,
			func(w io.Writer, p struct {
				ID string `json:"id"`
			}) error {
				_, err := fmt.Fprintf(w, "%s purged: every record deleted; the ID may be provisioned again\n", p.ID)
				return err
			})
	}
	return show(ctx, k.call, "DELETE", apiPath("devices", id), body, printLifecycle)
}

// printLifecycle shows a device's lifecycle state.
func printLifecycle(w io.Writer, d backend.Device) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tREASON\tBY\tSINCE")
	since := "-"
	if d.StateAt != nil {
		since = d.StateAt.UTC().Format(time.RFC3339)
	}
	reason, by := d.StateReason, d.StateBy
	if reason == "" {
		reason = "-"
	}
	if by == "" {
		by = "-"
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.ID, d.State, reason, by, since)
	return tw.Flush()
}
