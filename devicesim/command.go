package devicesim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// RecordCommands is the command executor's record (commandsRecord).
const RecordCommands = "commands"

// DefaultRecentCommands is how many command results the device remembers.
const DefaultRecentCommands = 256

// Failure reasons of command results that the backend may match on.
const (
	ReasonExpired     = "expired"
	ReasonInterrupted = "interrupted: the device restarted before the result was recorded; not retried"
)

// commandsRecord is the exactly-once state on flash.
type commandsRecord struct {
	// Executing is set, and persisted, before a command with a side
	// effect (write_register, reboot) starts, and cleared together with
	// the result being recorded.
	Executing *executingCommand `json:"executing,omitempty"`
	// Recent are the latest results, oldest first, at most Recent of them.
	Recent []topics.CommandResult `json:"recent"`
}

type executingCommand struct {
	ID        string    `json:"id"`
	Action    string    `json:"action"`
	StartedAt time.Time `json:"started_at"`
}

// RegisterIO reads and writes inverter registers; *modbus.Client
// implements it (WriteRegister verifies by reading back).
type RegisterIO interface {
	ReadRegisters(ctx context.Context, addr, count uint16) ([]uint16, error)
	WriteRegister(ctx context.Context, addr, value uint16) error
}

var _ RegisterIO = (*modbus.Client)(nil)

// CommandOptions configures AttachCommands.
type CommandOptions struct {
	// Modbus returns the adapter of the current boot, or nil while there
	// is none (register commands then fail).
	Modbus func() RegisterIO
	// Recent is how many results are kept for duplicate detection;
	// default DefaultRecentCommands.
	Recent int
}

// CommandStats are an executor's counters since it was attached.
type CommandStats struct {
	Executed    int64 // commands run (side effect or not); not duplicates
	Succeeded   int64
	Failed      int64 // includes expired and invalid
	Expired     int64
	Duplicates  int64 // deliveries answered from the stored result
	Writes      int64 // register writes issued to the adapter
	Interrupted int64 // executions found unfinished at boot
	Malformed   int64 // bodies that could not be answered
}

// CommandExecutor runs down/command messages at most once each and
// answers on up/command_result.
//
// Exactly-once: results are kept on flash by command ID (the last Recent
// of them). A delivery of a known ID is answered with the stored result,
// marked duplicate, and not executed. For a command with a side effect
// the executor persists an "executing" marker first, executes, then
// persists the result (clearing the marker) and only then publishes it.
// A marker found at boot means the power went between the side effect and
// the result: the command is recorded as failed ReasonInterrupted, never
// re-run (at most once beats at least once for actuators) — except a
// reboot, which is recorded as succeeded, since the device did restart.
type CommandExecutor struct {
	d   *Device
	opt CommandOptions

	mu    sync.Mutex // guards rec and index; held while a command runs
	rec   commandsRecord
	index map[string]int // ID -> position in rec.Recent

	executed, succeeded, failed, expired, duplicates atomic.Int64
	writes, interrupted, malformed                   atomic.Int64
}

// AttachCommands registers the command executor on d: it loads its record
// at every boot (settling an interrupted execution) and handles
// topics.KindCommand downlinks. Call it before d.Run.
func AttachCommands(d *Device, opt CommandOptions) (*CommandExecutor, error) {
	if opt.Recent <= 0 {
		opt.Recent = DefaultRecentCommands
	}
	if opt.Modbus == nil {
		opt.Modbus = func() RegisterIO { return nil }
	}
	e := &CommandExecutor{d: d, opt: opt}
	if err := e.load(); err != nil {
		return nil, fmt.Errorf("attach commands %s: %w", d.id, err)
	}
	d.OnBoot(func(*BootRecord) error { return e.load() })
	d.Handle(topics.KindCommand, e.handle)
	return e, nil
}

// load reads the record and settles an execution the last boot left
// unfinished. An unreadable record is logged and replaced: losing the
// recent IDs is better than a device that cannot boot.
func (e *CommandExecutor) load() error {
	var rec commandsRecord
	if err := e.d.fl.Load(RecordCommands, &rec); err != nil && !errors.Is(err, flash.ErrNotFound) {
		e.d.log.Error().Err(err).Msg("command record unreadable: recent command IDs lost")
		rec = commandsRecord{}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rec = rec
	e.reindex()
	if x := rec.Executing; x != nil {
		res := topics.CommandResult{ID: x.ID, Status: topics.ResultFailed, ExecutedAt: x.StartedAt, Error: ReasonInterrupted}
		if x.Action == topics.ActionReboot {
			res = topics.CommandResult{ID: x.ID, Status: topics.ResultSuccess, ExecutedAt: x.StartedAt}
		}
		e.interrupted.Add(1)
		e.d.log.Warn().Str("command", x.ID).Str("action", x.Action).Str("status", res.Status).
			Msg("command found unfinished at boot: not re-executed")
		if err := e.record(res); err != nil {
			return fmt.Errorf("settle interrupted command %s: %w", x.ID, err)
		}
	}
	return nil
}

func (e *CommandExecutor) reindex() {
	e.index = make(map[string]int, len(e.rec.Recent))
	for i, r := range e.rec.Recent {
		e.index[r.ID] = i
	}
}

// record appends res, clears the marker and persists; e.mu must be held.
// On a flash error the in-memory state keeps res (the device still knows
// the ID until it restarts).
func (e *CommandExecutor) record(res topics.CommandResult) error {
	e.rec.Executing = nil
	e.rec.Recent = append(e.rec.Recent, res)
	if n := len(e.rec.Recent) - e.opt.Recent; n > 0 {
		e.rec.Recent = append([]topics.CommandResult(nil), e.rec.Recent[n:]...)
	}
	e.reindex()
	return e.d.fl.Save(RecordCommands, e.rec)
}

// Result returns the stored result of command id, if it is still known.
func (e *CommandExecutor) Result(id string) (topics.CommandResult, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	i, ok := e.index[id]
	if !ok {
		return topics.CommandResult{}, false
	}
	return e.rec.Recent[i], true
}

// Stats returns a snapshot of the counters.
func (e *CommandExecutor) Stats() CommandStats {
	return CommandStats{
		Executed: e.executed.Load(), Succeeded: e.succeeded.Load(), Failed: e.failed.Load(),
		Expired: e.expired.Load(), Duplicates: e.duplicates.Load(), Writes: e.writes.Load(),
		Interrupted: e.interrupted.Load(), Malformed: e.malformed.Load(),
	}
}

// handle processes one verified down/command message.
func (e *CommandExecutor) handle(ctx context.Context, msg envelope.Message) error {
	c, err := decodeCommand(msg.Body)
	if err != nil {
		e.malformed.Add(1)
		return fmt.Errorf("command: not answered: %w", err)
	}
	if _, known := e.Result(c.ID); !known {
		e.receipt(ctx, c.ID)
	}
	res, reboot, err := e.run(ctx, c)
	if err != nil {
		return err
	}
	if perr := e.d.Publish(ctx, topics.KindCommandResult, topics.CommandResultBody{CommandResult: &res}); perr != nil {
		// The result is stored: a redelivery gets it as a duplicate.
		err = fmt.Errorf("command %s: publish result: %w", c.ID, perr)
	}
	if reboot {
		e.d.Reboot("command " + c.ID)
	}
	return err
}

// receipt publishes the non-final result "delivered" for a command the
// device has not seen before, ahead of executing it (docs/PROTOCOL.md,
// "Command receipts"). It is best effort: a lost receipt only means the
// backend goes from sent to the final state in one step.
func (e *CommandExecutor) receipt(ctx context.Context, id string) {
	r := topics.CommandResult{ID: id, Status: topics.ResultDelivered, ExecutedAt: e.d.clk.Now().UTC()}
	if err := e.d.Publish(ctx, topics.KindCommandResult, topics.CommandResultBody{CommandResult: &r}); err != nil {
		e.d.log.Warn().Err(err).Str("command", id).Msg("command receipt not sent")
	}
}

// decodeCommand parses {"command":{...}} strictly. A body that parses
// but breaks the command rules is answered (failed) by run, not here.
func decodeCommand(body []byte) (topics.Command, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var b topics.CommandBody
	if err := dec.Decode(&b); err != nil {
		return topics.Command{}, fmt.Errorf("malformed body: %w", err)
	}
	if dec.More() {
		return topics.Command{}, errors.New("malformed body: trailing data")
	}
	if b.Command == nil {
		return topics.Command{}, errors.New(`malformed body: no "command"`)
	}
	if err := topics.ValidateDeviceCommand(topics.Command{ID: b.Command.ID, Action: topics.ActionPing}); err != nil {
		return topics.Command{}, err // no usable ID to answer under
	}
	return *b.Command, nil
}

// run executes c at most once and returns the result to publish and
// whether the device must reboot once it is out. An error means the
// command was not executed and must not be answered (its marker could not
// be persisted, or the power was cut).
func (e *CommandExecutor) run(ctx context.Context, c topics.Command) (topics.CommandResult, bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	log := e.d.log.With().Str("command", c.ID).Str("action", c.Action).Logger()
	if i, ok := e.index[c.ID]; ok {
		e.duplicates.Add(1)
		res := e.rec.Recent[i]
		res.Duplicate = true
		log.Info().Str("status", res.Status).Msg("duplicate command: repeating its result")
		return res, false, nil
	}
	now := e.d.clk.Now()
	res := topics.CommandResult{ID: c.ID, ExecutedAt: now.UTC()}
	sideEffect := false
	switch err := topics.ValidateDeviceCommand(c); {
	case err != nil:
		res.Status, res.Error = topics.ResultFailed, "invalid command: "+err.Error()
	case !c.ExpiresAt.IsZero() && now.After(c.ExpiresAt):
		res.Status, res.Error = topics.ResultFailed, ReasonExpired
		e.expired.Add(1)
	default:
		sideEffect = c.Action == topics.ActionWriteRegister || c.Action == topics.ActionReboot
		if sideEffect {
			e.rec.Executing = &executingCommand{ID: c.ID, Action: c.Action, StartedAt: res.ExecutedAt}
			if err := e.d.fl.Save(RecordCommands, e.rec); err != nil {
				e.rec.Executing = nil
				return res, false, fmt.Errorf("command %s: not executed: persist marker: %w", c.ID, err)
			}
		}
		e.execute(ctx, c, &res)
		res.DurationMS = e.d.clk.Now().Sub(now).Milliseconds()
	}
	e.executed.Add(1)
	if res.Status == topics.ResultSuccess {
		e.succeeded.Add(1)
	} else {
		e.failed.Add(1)
	}
	if err := e.record(res); err != nil {
		if errors.Is(err, flash.ErrPowerCut) {
			// The device is off: nothing more happens. At the next boot
			// the marker (if any) settles the command.
			return res, false, fmt.Errorf("command %s: %w", c.ID, err)
		}
		log.Error().Err(err).Msg("command result not persisted")
	}
	log.Info().Str("status", res.Status).Str("error", res.Error).Msg("command executed")
	return res, res.Status == topics.ResultSuccess && c.Action == topics.ActionReboot, nil
}

// execute runs a valid, unexpired command and fills in res.
func (e *CommandExecutor) execute(ctx context.Context, c topics.Command, res *topics.CommandResult) {
	fail := func(reason string) { res.Status, res.Error = topics.ResultFailed, reason }
	res.Status = topics.ResultSuccess
	switch c.Action {
	case topics.ActionPing, topics.ActionReboot:
		return // a reboot happens once its result is out
	}
	reg, _ := telemetry.RegisterByName(c.TargetRegister)
	io := e.opt.Modbus()
	if io == nil {
		fail("modbus adapter not ready")
		return
	}
	if c.Action == topics.ActionWriteRegister {
		e.writes.Add(1)
		if err := io.WriteRegister(ctx, uint16(reg.Code), uint16(*c.Value)); err != nil {
			fail(modbusReason(err))
			return
		}
	}
	vals, err := io.ReadRegisters(ctx, uint16(reg.Code), 1)
	if err != nil {
		fail("read back: " + modbusReason(err))
		return
	}
	v := int(vals[0])
	res.Value = &v
	if c.Action == topics.ActionWriteRegister && v != *c.Value {
		fail(fmt.Sprintf("read back %d after writing %d", v, *c.Value))
	}
}

// modbusReason turns an adapter error into a result reason, e.g.
// "modbus exception 03 illegal data value" or "modbus timeout".
func modbusReason(err error) string {
	var ex *modbus.ExceptionError
	switch {
	case errors.As(err, &ex):
		names := map[byte]string{
			modbus.ExIllegalFunction: "illegal function", modbus.ExIllegalAddress: "illegal data address",
			modbus.ExIllegalValue: "illegal data value", modbus.ExDeviceFailure: "slave device failure",
		}
		name := names[ex.Code]
		if name == "" {
			name = "unknown"
		}
		return fmt.Sprintf("modbus exception %02X %s", ex.Code, name)
	case errors.Is(err, context.DeadlineExceeded):
		return "modbus timeout"
	case errors.Is(err, modbus.ErrVerify):
		return "modbus write not verified: " + err.Error()
	case errors.Is(err, modbus.ErrCRC):
		return "modbus crc error"
	case errors.Is(err, modbus.ErrFrame):
		return "modbus malformed response"
	}
	return "modbus: " + err.Error()
}
