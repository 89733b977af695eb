/** Exit codes of the ramsnap command. */
export const EXIT_OK = 0;
/** The file is invalid or incomplete, or a check failed. */
export const EXIT_INVALID = 1;
/** Bad flags or arguments. */
export const EXIT_USAGE = 2;
/** A bug in ramsnap (an error that is not a RamsnapError). */
export const EXIT_INTERNAL = 70;
