package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	commandsvc "github.com/ecowatt/ecowatt/backend/commands"
	"github.com/ecowatt/ecowatt/backend/store"
)

// commandConfig are serve's flags for the command service.
type commandConfig struct {
	sweep, resultTimeout, resendAfter time.Duration
}

func (c *commandConfig) register(fs *flag.FlagSet) {
	fs.DurationVar(&c.sweep, "command-sweep", commandsvc.DefaultSweepInterval, "how often queued, expired and timed-out commands are looked for")
	fs.DurationVar(&c.resultTimeout, "command-result-timeout", commandsvc.DefaultResultTimeout, "a delivered command without a result after this is timed_out")
	fs.DurationVar(&c.resendAfter, "command-resend-after", commandsvc.DefaultResendAfter, "a sent command without a device receipt after this is sent again")
}

// newCommands builds the command service on svc and attaches its handlers.
func newCommands(c commandConfig, rdb redis.UniversalClient, prefix string, svc *backend.Service, log zerolog.Logger, reg prometheus.Registerer) (*commandsvc.Service, error) {
	keys, err := store.NewKeys(prefix)
	if err != nil {
		return nil, fmt.Errorf("commands: %w", err)
	}
	cmds, err := commandsvc.New(commandsvc.Config{
		Redis: rdb, Keys: keys, Fleet: svc, Registerer: reg,
		Logger:        log.With().Str("component", "commands").Logger(),
		SweepInterval: c.sweep, ResultTimeout: c.resultTimeout, ResendAfter: c.resendAfter,
	})
	if err != nil {
		return nil, err
	}
	cmds.Attach()
	return cmds, nil
}
