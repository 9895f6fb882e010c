//go:build race

package hbone

// raceEnabled: sync.Pool drops items at random under the race detector,
// so allocation budgets are only checked in normal builds.
const raceEnabled = true
