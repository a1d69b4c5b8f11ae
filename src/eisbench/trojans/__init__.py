"""The trojan domain: triggers and stamping, the trigger bank, the zoo, the judge, its
views and the quiz."""
