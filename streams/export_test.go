package streams

// SetReadMaxBytes caps the size of ReadRange's answers until the returned function runs.
func SetReadMaxBytes(n int) (restore func()) {
	was := readMaxBytes
	readMaxBytes = n
	return func() { readMaxBytes = was }
}

// BackOff is backOff, the wait between attempts of an append that lost a race.
var BackOff = backOff
