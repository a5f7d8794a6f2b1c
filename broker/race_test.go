//go:build race

package broker

// raceEnabled: -race makes frames, and so goroutine stacks, larger.
const raceEnabled = true
