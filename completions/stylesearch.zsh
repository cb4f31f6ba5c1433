
#compdef stylesearch

_stylesearch_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _STYLESEARCH_COMPLETE=complete_zsh stylesearch)
}

compdef _stylesearch_completion stylesearch

