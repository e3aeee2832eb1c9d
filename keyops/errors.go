package keyops

// RefError is a key operation refused because of the key it names: none
// matches (KEY_NOT_FOUND), several do (AMBIGUOUS_REF), or it is not in a
// state the operation applies to (KEY_NOT_ACTIVE, ALREADY_ROTATED).
type RefError struct {
	Code string // KEY_NOT_FOUND, AMBIGUOUS_REF, KEY_NOT_ACTIVE, ALREADY_ROTATED
	Msg  string
}

func (e *RefError) Error() string { return e.Msg }

// InputError is a key operation refused because of what it was asked: a
// missing label, a bad expiry, scope or grace.
type InputError string

func (e InputError) Error() string { return string(e) }
