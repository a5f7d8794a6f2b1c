package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend/commands"
	"github.com/ecowatt/ecowatt/topics"
)

func commandSend(ctx context.Context, e env, args []string) error {
	k := newCall(e, "command send", "command send ID ACTION [REGISTER [VALUE]] [--ttl 10m] [--request-id R] [--wait] [-o table|json]", true)
	ttl := k.fs.Duration("ttl", 0, "time to live before delivery, e.g. 90s or 10m (server default 10m)")
	reqID := k.fs.String("request-id", "", "your own tag, echoed in the command's events; repeating it does not queue twice")
	wait := k.fs.Bool("wait", false, "wait for the command's final state; fail unless it succeeded")
	timeout := k.fs.Duration("timeout", 2*time.Minute, "how long --wait waits")
	pos, err := k.parse(args, 2, 4)
	if err != nil {
		return err
	}
	doc := topics.OpsCommand{Action: pos[1], TTL: *ttl, RequestID: *reqID}
	if len(pos) >= 3 {
		doc.TargetRegister = pos[2]
	}
	if len(pos) == 4 {
		v, err := strconv.Atoi(pos[3])
		if err != nil {
			return k.usage(fmt.Sprintf("VALUE %q is not an integer", pos[3]))
		}
		doc.Value = &v
	}
	raw, err := k.send(ctx, "POST", apiPath("devices", pos[0], "commands"), doc)
	if err != nil {
		return err
	}
	cmd, err := decode[commands.Command](k, raw)
	if err != nil {
		return err
	}
	if *wait {
		if raw, cmd, err = waitCommand(ctx, k, cmd.ID, *timeout); err != nil {
			return err
		}
	}
	if err := render(k, raw, printCommand); err != nil {
		return err
	}
	if *wait && cmd.State != commands.StateSucceeded {
		return fmt.Errorf("command %s %s: %s", cmd.ID, cmd.State, reason(cmd))
	}
	return nil
}

// waitCommand polls a command until it is final or timeout passes.
func waitCommand(ctx context.Context, k *call, cid string, timeout time.Duration) (json.RawMessage, commands.Command, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var cmd commands.Command
	for {
		raw, err := k.send(ctx, "GET", apiPath("commands", cid), nil)
		if err == nil {
			cmd, err = decode[commands.Command](k, raw)
		}
		if err == nil && commands.Final(cmd.State) {
			return raw, cmd, nil
		}
		select {
		case <-ctx.Done():
			return nil, cmd, fmt.Errorf("command %s still %s after %v (it stays queued; see ecowatt command show %s)", cid, cmd.State, timeout, cid)
		case <-t.C:
		}
	}
}

func reason(c commands.Command) string {
	switch {
	case c.Error != "":
		return c.Error
	case c.Result != nil && c.Result.Error != "":
		return c.Result.Error
	}
	return "no reason given"
}

func commandList(ctx context.Context, e env, args []string) error {
	k := newCall(e, "command list", "command list ID [-o table|json] [--limit N] [--before CID]", true)
	limit := k.fs.Int("limit", 0, "how many, newest first (server default 50, at most 500)")
	before := k.fs.String("before", "", "list commands older than this one (the previous page's next)")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	q := url.Values{}
	if *limit != 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	if *before != "" {
		q.Set("before", *before)
	}
	return show(ctx, k, "GET", withQuery(apiPath("devices", pos[0], "commands"), q), nil, func(w io.Writer, p commands.Page) error {
		if err := printCommands(w, p.Commands...); err != nil {
			return err
		}
		if p.Next != "" {
			fmt.Fprintf(w, "(more: --before %s)\n", p.Next)
		}
		return nil
	})
}

func commandShow(ctx context.Context, e env, args []string) error {
	return commandOne(ctx, e, args, "show", "GET")
}

func commandCancel(ctx context.Context, e env, args []string) error {
	return commandOne(ctx, e, args, "cancel", "DELETE")
}

func commandOne(ctx context.Context, e env, args []string, name, method string) error {
	k := newCall(e, "command "+name, "command "+name+" COMMAND-ID [-o table|json]", true)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	return show(ctx, k, method, apiPath("commands", pos[0]), nil, printCommand)
}

func printCommand(w io.Writer, c commands.Command) error { return printCommands(w, c) }

// printCommands writes a table: one command a line, timestamps in UTC.
func printCommands(w io.Writer, cs ...commands.Command) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tACTION\tTARGET\tVALUE\tSTATE\tRESULT\tCREATED\tSENT\tDELIVERED\tFINISHED")
	for _, c := range cs {
		result := "-"
		switch {
		case c.Result != nil && c.Result.Error != "":
			result = c.Result.Error
		case c.Result != nil && c.Result.Value != nil:
			result = strconv.Itoa(*c.Result.Value)
		case c.Result != nil:
			result = c.Result.Status
		case c.Error != "":
			result = c.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Action, dash(c.TargetRegister), intOrDash(c.Value),
			c.State, result, stamp(&c.CreatedAt), stamp(c.SentAt), stamp(c.DeliveredAt), stamp(c.FinishedAt))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func intOrDash(v *int) string {
	if v == nil {
		return "-"
	}
	return strconv.Itoa(*v)
}

func stamp(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}
